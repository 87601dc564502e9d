"""TensorRT: plugin registration vs the exporter's nodes, the build plan, engine checks, the `trt-native` lowering,
the plugins' AOT kernels, and clean failures without TensorRT. Everything here but the `tensorrt`-marked tests runs
without TensorRT or a GPU; the AOT kernels run in Triton's interpreter and compile to PTX without a GPU.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import typing
from dataclasses import fields
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # the AOT kernels on CPU tensors; must precede `import triton`

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from tiny import save_hf_model  # noqa: E402

from llamaport import enginedir  # noqa: E402
from llamaport.cli import main  # noqa: E402
from llamaport.plugins import tensorrt_plugins  # noqa: E402
from llamaport.plugins.schemas import GQA_PLUGIN, PARSER_ATTRIBUTES, PLUGINS, ROPE_PLUGIN  # noqa: E402
from llamaport.plugins.trt_build import (  # noqa: E402
    BuildOptions, PluginMode, build_record, built_manifest, plan_build,
)
from llamaport.runtime.backends.tensorrt_backend import (  # noqa: E402
    DECODE, PREFILL, RuntimeInfo, engine_problems, engine_signature, profile_for, rebuild_command,
)

try:
    import tensorrt  # noqa: F401

    HAVE_TENSORRT = True
except ImportError:
    HAVE_TENSORRT = False
no_tensorrt = pytest.mark.skipif(HAVE_TENSORRT, reason="checks the failure without TensorRT; TensorRT is installed")
needs_tensorrt = pytest.mark.skipif(not HAVE_TENSORRT, reason="needs TensorRT and an NVIDIA GPU (not installable here)")
MAX_SEQ = 32


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A tiny GQA model exported once for each TensorRT target (trt-native verified against eager)."""
    from llamaport.exporter import ExportOptions, export_engine

    root = tmp_path_factory.mktemp("trt")
    save_hf_model(root / "ckpt", "gqa")
    out = {}
    for target, verify in (("trt", False), ("trt-native", True)):
        export_engine(root / "ckpt", root / target, ExportOptions(target=target, max_seq=MAX_SEQ, max_batch=2,
                                                                   verify=verify, quiet=True))
        out[target] = root / target
    out["ckpt"] = root / "ckpt"
    return out


def graph(folder: Path) -> onnx.GraphProto:
    return onnx.load(str(folder / enginedir.GRAPH), load_external_data=False).graph


# ------------------------------------------------------------------------------------------------ one source of truth
class FakeTensorDesc:
    """Stands in for tensorrt.plugin.TensorDesc: like() / aliased() as the descriptors use them."""

    def __init__(self, name: str):
        self.name, self.alias = name, None

    def like(self):
        return FakeTensorDesc(self.name + "'")

    def aliased(self):
        out = FakeTensorDesc(self.name + "'")
        out.alias = self
        return out


def test_plugin_registrations_take_exactly_the_inputs_outputs_and_fields_the_exporter_writes(exports):
    specs = {spec.name: spec for spec in PLUGINS}
    nodes = [n for n in graph(exports["trt"]).node if n.domain == GQA_PLUGIN.namespace]
    assert {n.op_type for n in nodes} == {"GQAAttention"}  # RoPE is fused into the attention op here
    for node in nodes:
        spec = specs[node.op_type]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert (len(node.input), len(node.output)) == (len(spec.inputs), len(spec.outputs))
        assert set(attrs) == set(spec.fields) | set(PARSER_ATTRIBUTES)
        assert attrs["plugin_namespace"].decode() == spec.namespace and attrs["plugin_version"].decode() == "1"
    for spec in PLUGINS:
        schema = onnx.defs.get_schema(spec.name, 1, spec.namespace)
        assert [p.name for p in schema.inputs] == list(spec.inputs)
        assert [p.name for p in schema.outputs] == list(spec.outputs)
        assert set(schema.attributes) == set(spec.node_attributes)


@pytest.mark.parametrize("spec", PLUGINS, ids=lambda s: s.name)
def test_tensorrt_signatures_follow_the_rules_trtp_register_and_aot_impl_check(spec):
    # tensorrt/plugin/_validate.py: TensorDesc args first, then annotated attributes without defaults, not named
    # outputs/stream/tactic; a Tuple[TensorDesc, ...] return; aot_impl exactly (inputs, attributes, outputs, tactic).
    sig = inspect.signature(tensorrt_plugins._with_signature(
        tensorrt_plugins.DESCRIPTORS[spec.name], tensorrt_plugins.descriptor_signature(spec, FakeTensorDesc), "d"))
    params = list(sig.parameters.values())
    assert [p.name for p in params] == [*spec.inputs, *spec.fields]
    assert [p.annotation for p in params] == [FakeTensorDesc] * len(spec.inputs) + [int] * len(spec.fields)
    assert all(p.default is inspect.Parameter.empty for p in params)
    assert not {"outputs", "stream", "tactic"} & set(spec.fields)
    assert typing.get_origin(sig.return_annotation) is tuple
    assert typing.get_args(sig.return_annotation) == (FakeTensorDesc,) * len(spec.outputs)
    aot = inspect.signature(tensorrt_plugins._with_signature(lambda **a: a, tensorrt_plugins.aot_signature(spec), "a"))
    assert f"({', '.join(aot.parameters)})" == f"({', '.join([*spec.inputs, *spec.fields, 'outputs', 'tactic'])})"


def test_gqa_descriptor_aliases_the_cache_outputs_to_the_cache_inputs():
    descs = [FakeTensorDesc(n) for n in GQA_PLUGIN.inputs]
    describe = tensorrt_plugins._with_signature(tensorrt_plugins.describe_gqa,
                                                tensorrt_plugins.descriptor_signature(GQA_PLUGIN, FakeTensorDesc), "d")
    outputs = describe(*descs, num_heads=4, num_kv_heads=2, head_dim=16)
    assert len(outputs) == len(GQA_PLUGIN.outputs)
    aliases = {o: out.alias.name for o, out in zip(GQA_PLUGIN.outputs, outputs) if out.alias is not None}
    assert aliases == GQA_PLUGIN.aliases
    assert len(tensorrt_plugins.describe_rope(*[FakeTensorDesc(n) for n in ROPE_PLUGIN.inputs], num_heads=4)) == 1


class FakeExpr(int):
    """A TensorRT shape expression that happens to be known: arithmetic like int, is_constant()/constant_value()."""

    def __mul__(self, other):
        return FakeExpr(int(self) * int(other))

    def is_constant(self):
        return True

    def constant_value(self):
        return int(self)


class FakeTrtp:
    """The parts of tensorrt.plugin an aot_impl touches."""

    class KernelLaunchParams:
        grid_x = grid_y = grid_z = block_x = block_y = block_z = 1
        shared_mem = 0

    SymInt32 = staticmethod(int)

    class SymIntExprs:
        from_tuple = staticmethod(list)

    @staticmethod
    def cdiv(a, b):
        return -(-int(a) // b)


class FakeTrt:
    float32, float16, bfloat16 = "f32", "f16", "bf16"


def test_aot_impls_launch_their_kernel_over_the_right_grid_with_the_right_scalars(monkeypatch):
    from llamaport.plugins import triton_trt_kernels as kernels

    compiled = []
    monkeypatch.setattr(kernels, "compile_ptx", lambda kernel, sig, const, target=None, options=None:
                        compiled.append((kernel, sig, const)) or ("name", "ptx", 128, 4096))

    def desc(dtype, *shape):
        d = FakeTensorDesc("t")
        d.dtype, d.shape_expr = dtype, tuple(FakeExpr(n) for n in shape)
        return d

    batch, seq, heads, kv, dim, max_seq = 3, 40, 8, 2, 64, 512
    q = desc("f16", batch, seq, heads * dim)
    k = desc("f16", batch, seq, kv * dim)
    table = desc("f16", batch, seq, dim // 2)
    cache = desc("f16", batch, kv, max_seq, dim)
    name, ptx, launch, scalars = tensorrt_plugins.aot_gqa(
        FakeTrt, FakeTrtp, q, k, k, table, table, cache, cache, desc("i64", batch), heads, kv, dim, (), 0)
    assert (name, ptx, launch.block_x, launch.shared_mem) == ("name", "ptx", 128, 4096)
    assert (launch.grid_x, launch.grid_y) == (-(-seq // kernels.GQA_BLOCK_M), batch * kv)
    assert scalars == [seq, max_seq]  # gqa_plugin_kernel's (seq_len, max_seq)
    kernel, signature, constexprs = compiled[-1]
    assert kernel is kernels.gqa_plugin_kernel and signature == kernels.gqa_signature("float16")
    assert list(signature)[8:10] == ["seq_len", "max_seq"] and constexprs["NUM_KV_HEADS"] == kv
    assert constexprs["PRECISION"] == "tf32"  # fp16 inputs; fp32 engines get "ieee"
    name, ptx, launch, scalars = tensorrt_plugins.aot_rope(FakeTrt, FakeTrtp, q, table, table, heads, (), 0)
    assert (launch.grid_x, launch.grid_y, scalars) == (batch * seq, heads, [batch * seq])
    assert compiled[-1][2]["HEAD_DIM"] == dim and compiled[-1][1] == kernels.rope_signature("float16")


# ------------------------------------------------------------------------------------------------ build plan
def test_build_plan_has_prefill_and_decode_profiles_over_every_input(exports):
    plan = plan_build(exports["trt"], BuildOptions(plugins="llamaport", timing_cache=exports["trt"].parent / "tc"))
    prefill, decode = plan.profiles
    assert (prefill.name, decode.name) == ("prefill", "decode")
    manifest = enginedir.read_manifest(exports["trt"])
    kv, d = manifest.num_key_value_heads, manifest.head_dim
    for profile in plan.profiles:
        assert [name for name, _ in profile.shapes] == [i.name for i in manifest.inputs]
    shapes = dict(prefill.shapes)
    assert (shapes["input_ids"].min, shapes["input_ids"].opt, shapes["input_ids"].max) == ((1, 1), (2, 32), (2, 32))
    assert shapes["past_lengths"].max == shapes["input_lengths"].max == (2,)
    assert shapes["past.1.value"].min == (1, kv, MAX_SEQ, d) and shapes["past.1.value"].max == (2, kv, MAX_SEQ, d)
    ids = dict(decode.shapes)["input_ids"]
    assert (ids.min, ids.opt, ids.max) == ((1, 1), (2, 1), (2, 1))
    assert plan.strongly_typed and plan.weights == "fp32" and plan.mode is PluginMode.LLAMAPORT
    assert [(n.plugin_id, dict(n.fields)) for n in plan.plugin_nodes] == [
        ("llamaport::GQAAttention", {"num_heads": 4, "num_kv_heads": 2, "head_dim": 16})]
    assert enginedir.GRAPH in plan.copy_files and "model.onnx.data" in plan.copy_files
    record = build_record(plan, "11.0.0.1", "9.0")
    assert record["plugin_version"] == enginedir.TRT_PLUGIN_VERSION and record["build_options"]["timing_cache"]
    json.dumps(record)  # the manifest entry is plain JSON


def test_native_build_plan_lists_tensorrt_attention_ops_and_no_plugin(exports):
    plan = plan_build(exports["trt-native"], BuildOptions(plugins="native"))
    ids = {n.plugin_id for n in plan.plugin_nodes}
    assert ids == {"trt::TRT_Attention", "trt::TRT_KVCacheUpdate"}
    attention = next(n for n in plan.plugin_nodes if n.plugin_id == "trt::TRT_Attention")
    assert dict(attention.fields)["causal_kind"] == "lower_right"
    assert build_record(plan, "11.0", "9.0")["plugin_version"] is None


def test_build_plan_refuses_an_export_of_the_other_target_naming_the_fix(exports, tmp_path):
    with pytest.raises(enginedir.LlamaportError, match="--plugins llamaport"):
        plan_build(exports["trt"], BuildOptions(plugins="native"))
    with pytest.raises(enginedir.LlamaportError, match="--plugins native"):
        plan_build(exports["trt-native"], BuildOptions(plugins="llamaport"))
    with pytest.raises(enginedir.LlamaportError, match="--plugins 'bogus' does not exist"):
        plan_build(exports["trt"], BuildOptions(plugins="bogus"))
    onnx_like = tmp_path / "onnx_like"
    shutil.copytree(exports["trt"], onnx_like)
    data = json.loads((onnx_like / "manifest.json").read_text())
    data["target"] = "onnx"
    (onnx_like / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(enginedir.LlamaportError, match="--target trt"):
        plan_build(onnx_like)


def test_built_manifest_is_the_source_manifest_plus_the_build_record_and_the_engine_file(exports, tmp_path):
    out = tmp_path / "built"
    shutil.copytree(exports["trt"], out)
    (out / enginedir.TRT_ENGINE).write_bytes(b"not really an engine")
    plan = plan_build(exports["trt"])
    source = enginedir.read_manifest(exports["trt"])
    data = built_manifest(source, out, build_record(plan, "11.0.0", "8.9"))
    (out / enginedir.MANIFEST).write_text(json.dumps(data))
    reread = enginedir.open_engine_dir(out, verify=True)
    assert enginedir.TRT_ENGINE in reread.files and reread.target is enginedir.Target.TRT
    assert reread[enginedir.TRT_BUILD]["compute_capability"] == "8.9"
    assert {k: v for k, v in reread.data.items() if k not in ("files", "tensorrt", "format_version")} == \
        {k: v for k, v in source.data.items() if k not in ("files", "format_version")}


# ------------------------------------------------------------------------------------------------ engine checks
RECORD = {"tensorrt_version": "11.0.0.5", "compute_capability": "9.0", "plugins": "llamaport", "plugin_version": "1"}


@pytest.mark.parametrize("runtime, problem", [
    (RuntimeInfo("11.0.0.5", "9.0", "1"), None),
    (RuntimeInfo("11.1.0.2", "9.0", "1"), "built with TensorRT 11.0.0.5 and this machine has TensorRT 11.1.0.2"),
    (RuntimeInfo("11.0.0.5", "8.9", "1"), "compute capability 9.0 and this GPU is 8.9"),
    (RuntimeInfo("11.0.0.5", "9.0", "2"), "plugin kernels version 1 and this llamaport's are version 2"),
])
def test_engine_built_elsewhere_is_refused_with_the_reason(runtime, problem):
    problems = engine_problems({enginedir.TRT_BUILD: RECORD}, runtime)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]


def test_native_engines_ignore_the_plugin_version_and_unbuilt_dirs_are_refused():
    native = {**RECORD, "plugins": "native", "plugin_version": None}
    assert engine_problems({enginedir.TRT_BUILD: native}, RuntimeInfo("11.0.0.5", "9.0", "7")) == []
    assert "not written by 'llamaport build'" in engine_problems({}, RuntimeInfo("11", "9.0"))[0]
    cmd = rebuild_command(Path("/x/eng"), {enginedir.TRT_BUILD: native})
    assert cmd == "llamaport build /x/eng -o eng-rebuilt --plugins native"


class FakeEngine:
    """ICudaEngine's I/O tensor API (num_io_tensors, get_tensor_name/shape/dtype), over given specs."""

    class DType:
        def __init__(self, name: str):
            self.name = name

    TRT_NAMES = {"float32": "FLOAT", "float16": "HALF", "int64": "INT64"}

    def __init__(self, specs: list[enginedir.TensorSpec]):
        self.specs = {s.name: s for s in specs}
        self.names = list(self.specs)
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else -1 for d in self.specs[name].shape)

    def get_tensor_dtype(self, name: str):
        return self.DType(self.TRT_NAMES[self.specs[name].dtype])


def _engine_check(manifest, specs, inputs: set[str]) -> None:
    engine = FakeEngine(specs)
    found = engine_signature(engine, inputs.__contains__, [s.name for s in (*manifest.inputs, *manifest.outputs)])
    enginedir.check_graph_signature(manifest, *found, graph=enginedir.TRT_ENGINE)


def test_engine_signature_agrees_with_its_manifest_whatever_order_tensorrt_numbers_them(exports):
    manifest = enginedir.read_manifest(exports["trt"])
    specs = [*manifest.inputs, *manifest.outputs]
    _engine_check(manifest, specs[::-1], {s.name for s in manifest.inputs})


def test_engine_under_an_edited_manifest_is_refused_naming_both_files(exports, tmp_path):
    folder = tmp_path / "edited"
    shutil.copytree(exports["trt"], folder)
    data = json.loads((folder / enginedir.MANIFEST).read_text())
    specs = [*enginedir.read_manifest(folder).inputs, *enginedir.read_manifest(folder).outputs]  # the engine's
    data["max_seq"] = 4 * MAX_SEQ
    for entry in (*data["inputs"], *data["outputs"]):
        if entry["name"].startswith(("past.", "present.")):
            entry["shape"][2] = 4 * MAX_SEQ
    (folder / enginedir.MANIFEST).write_text(json.dumps(data))
    edited = enginedir.read_manifest(folder)
    with pytest.raises(enginedir.EngineDirError, match=rf"{enginedir.TRT_ENGINE} does not match .*manifest.json.*"
                                                       rf"max_seq {4 * MAX_SEQ}"):
        _engine_check(edited, specs, {s.name for s in edited.inputs})


def test_one_token_calls_run_on_the_decode_profile_and_longer_ones_on_prefill():
    assert profile_for(1) == DECODE and profile_for(2) == PREFILL and profile_for(4096) == PREFILL


# ------------------------------------------------------------------------------------------------ without TensorRT
@no_tensorrt
def test_build_without_tensorrt_exits_2_naming_what_to_install_and_writes_nothing(exports, tmp_path):
    out = tmp_path / "engine"
    result = CliRunner().invoke(main, ["build", str(exports["trt"]), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "pip install" in result.output and "tensorrt" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


@no_tensorrt
def test_tensorrt_backend_without_tensorrt_exits_2(exports):
    result = CliRunner().invoke(main, ["generate", str(exports["trt"]), "--prompt-ids", "1,2,3", "--backend",
                                       "tensorrt", "--max-new-tokens", "2"])
    assert result.exit_code == 2, result.output
    assert "needs TensorRT" in result.output and "pip install" in result.output


def test_build_with_bad_input_exits_1_before_looking_for_tensorrt(exports, tmp_path):
    result = CliRunner().invoke(main, ["build", str(exports["trt"]), "-o", str(tmp_path / "e"), "--plugins", "native"])
    assert result.exit_code == 1 and "--plugins llamaport" in result.output
    assert not (tmp_path / "e").exists()


# ------------------------------------------------------------------------------------------------ trt-native lowering
def test_trt_native_graph_matches_eager_over_prefill_and_decode_through_reference_ops(exports):
    # Export verification ran the graph in onnx.reference (TRT_* ops as plugins/reference_trt_native.py) on a batch
    # of two prompts of different lengths plus decode steps, against fp32 eager.
    accuracy = enginedir.read_manifest(exports["trt-native"]).verification
    assert accuracy["passed"] and accuracy["backend"] == "onnx-reference" and accuracy["batch"] == 2
    assert accuracy["max_abs_logit_diff"] <= 1e-4 and accuracy["top1_agreement"] == 1.0
    ops = {(n.domain, n.op_type) for n in graph(exports["trt-native"]).node}
    assert {("trt", "TRT_Attention"), ("trt", "TRT_KVCacheUpdate"), ("", "RotaryEmbedding")} <= ops
    assert not any(domain == GQA_PLUGIN.namespace for domain, _ in ops)


def test_reference_kv_cache_update_refuses_writes_past_the_cache():
    from llamaport.plugins.reference_trt_native import kv_cache_update

    cache = np.zeros((1, 1, 4, 2), np.float32)
    out = kv_cache_update(cache, np.ones((1, 1, 2, 2), np.float32), np.array([2], np.int32))
    assert out[0, 0, :, 0].tolist() == [0, 0, 1, 1] and cache.sum() == 0
    with pytest.raises(NotImplementedError, match="past the cache"):
        kv_cache_update(cache, np.ones((1, 1, 2, 2), np.float32), np.array([3], np.int32))


# ------------------------------------------------------------------------------------------------ AOT kernels
def _attention_case(batch, seq_len, heads, kv_heads, dim, past, dtype):
    import torch

    gen = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    q = randn(batch, seq_len, heads * dim)
    k, v = randn(batch, seq_len, kv_heads * dim), randn(batch, seq_len, kv_heads * dim)
    past_lengths = torch.tensor(past)
    angles = (past_lengths[:, None] + torch.arange(seq_len)).float()[..., None] \
        * (1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim))  # (B, S, D/2)
    return q, k, v, angles.cos().to(dtype), angles.sin().to(dtype), randn(batch, kv_heads, MAX_SEQ, dim), \
        randn(batch, kv_heads, MAX_SEQ, dim), past_lengths


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU kernel tests need TRITON_INTERPRET=1")
@pytest.mark.parametrize("batch, seq_len, heads, kv_heads, past, dtype, tol", [
    (2, 5, 4, 2, [0, 3], "float32", 1e-5),  # prefill, one row continuing its cache
    (2, 1, 4, 1, [7, 12], "float32", 1e-5),  # decode, MQA
    (1, 20, 4, 2, [9], "float32", 1e-5),  # two query blocks: the second sees the first's new keys
    (2, 3, 4, 2, [5, 0], "float16", 4e-3),
])
def test_aot_plugin_kernels_match_eager_attention_and_rope(batch, seq_len, heads, kv_heads, past, dtype, tol):
    torch = pytest.importorskip("torch")
    triton = pytest.importorskip("triton", reason="triton is not installed")
    from llamaport.models.attention import gqa_attention as reference
    from llamaport.plugins import triton_trt_kernels as kernels
    from llamaport.plugins.ops import rotary_embedding

    dim = 16
    q, k, v, cos, sin, k_cache, v_cache, past_lengths = _attention_case(batch, seq_len, heads, kv_heads, dim, past,
                                                                        getattr(torch, dtype))
    ref_out, ref_k, ref_v = reference(*(t.float() for t in (q, k, v, cos, sin, k_cache, v_cache)), past_lengths,
                                      inplace=False)
    # Outputs in separate buffers holding the old cache: a kernel that read a slot written in this launch would
    # read the inputs' stale values and fail, which in-place buffers under the sequential interpreter would hide.
    out, k_out, v_out = torch.empty_like(q), k_cache.clone(), v_cache.clone()
    kernels.gqa_plugin_kernel[(triton.cdiv(seq_len, kernels.GQA_BLOCK_M), batch * kv_heads)](
        q, k, v, cos, sin, k_cache, v_cache, past_lengths, seq_len, MAX_SEQ, out, k_out, v_out,
        **kernels.gqa_constexprs(heads, kv_heads, dim, dtype))
    for got, want in ((out, ref_out), (k_out, ref_k), (v_out, ref_v)):
        assert (got.float() - want).abs().max().item() <= tol
    y = torch.empty_like(q)
    kernels.rope_plugin_kernel[(batch * seq_len, heads)](q, cos, sin, batch * seq_len, y,
                                                          **kernels.rope_constexprs(heads, dim, dim // 2))
    assert (y.float() - rotary_embedding(q.float(), cos.float(), sin.float(), heads)).abs().max().item() <= tol


COMPILE = """
from triton.backends.compiler import GPUTarget
from llamaport.plugins import triton_trt_kernels as k
target = GPUTarget("cuda", 90, 32)
gqa = k.gqa_plugin_kernel, k.GQA_COMPILE_OPTIONS
for kernel, sig, const, opts in ((*gqa[:1], k.gqa_signature("float16"), k.gqa_constexprs(4, 2, 16, "float16"), gqa[1]),
                                 (k.rope_plugin_kernel, k.rope_signature("float16"), k.rope_constexprs(4, 16, 8), None),
                                 (*gqa[:1], k.gqa_signature("float32"), k.gqa_constexprs(9, 3, 64, "float32"), gqa[1])):
    name, ptx, threads, shared = k.compile_ptx(kernel, sig, const, target, opts)
    params = [line for line in ptx.splitlines() if ".param" in line and name + "_param_" in line]
    print(name, threads, len(params), ".target sm_90" in ptx, shared <= k.SHARED_MEMORY_LIMIT)
"""


def test_aot_kernels_compile_to_ptx_with_tensorrts_argument_layout():
    pytest.importorskip("triton", reason="triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split("\n")
    gqa, rope, gqa_fp32 = (line.split() for line in lines[:3])
    # pointers of every input, the int32 scalars, pointers of every output (+ Triton's own trailing scratch args)
    assert gqa[0] == "gqa_plugin_kernel" and int(gqa[2]) >= len(GQA_PLUGIN.inputs) + 2 + len(GQA_PLUGIN.outputs)
    assert rope[0] == "rope_plugin_kernel" and int(rope[2]) >= len(ROPE_PLUGIN.inputs) + 1 + len(ROPE_PLUGIN.outputs)
    assert gqa[3] == rope[3] == "True"
    assert gqa[4] == rope[4] == gqa_fp32[4] == "True"  # shared memory within the 48 KB needing no opt-in


# ------------------------------------------------------------------------------------------------ with TensorRT
def _build_and_check(src: Path, tmp_path: Path, target: str, plugins: str, **export):
    from llamaport.exporter import ExportOptions, export_engine

    export_engine(src, tmp_path / "export", ExportOptions(target=target, max_seq=64, max_batch=2, quiet=True, **export))
    runner = CliRunner()
    result = runner.invoke(main, ["build", str(tmp_path / "export"), "-o", str(tmp_path / "engine"), "--plugins",
                                  plugins, "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["check", str(tmp_path / "engine"), "--reference", str(src), "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("target, plugins", [("trt", "llamaport"), ("trt-native", "native")])
def test_tiny_fp16_engine_builds_and_passes_check_against_eager(exports, tmp_path, target, plugins):
    _build_and_check(exports["ckpt"], tmp_path, target, plugins, dtype="fp16")


@pytest.mark.tensorrt
@needs_tensorrt
def test_tiny_int4_engine_builds_and_passes_check_against_eager(tmp_path):
    from llamaport.exporter import ExportOptions

    if "quant" not in {f.name for f in fields(ExportOptions)}:
        pytest.skip("this llamaport's exporter has no int4 option yet")
    from llamaport.exporter.quant import QuantSpec

    save_hf_model(tmp_path / "ckpt", "gqa", hidden_size=128, intermediate_size=256)  # K divisible by 64/128 blocks
    _build_and_check(tmp_path / "ckpt", tmp_path, "trt", "llamaport", dtype="fp16", quant=QuantSpec())
