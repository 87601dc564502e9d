"""Int4/int8 weight-only quantization: codes, byte layouts, graph forms, options, GGUF reuse, the export pass."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from llamaport.errors import LlamaportError
from llamaport.exporter import ExportOptions, export_engine
from llamaport.exporter import quant_pack as pack
from llamaport.exporter.quant import AccuracyLevel, QuantMethod, QuantSpec, parse_spec, resolve_spec
from llamaport.exporter.quant_lowering import attach_initializers, quantize_graph, source_from_codes
from llamaport.exporter.quant_methods import gptq, rtn
from llamaport.models.quantized import QuantizedWeight, quantize_model

N, K = 48, 256


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(N, K)


def _float_zero(q: QuantizedWeight) -> QuantizedWeight:
    """Q4_1-like codes: float zero points (GGUF's -min/scale)."""
    return QuantizedWeight(q.codes, q.scales, q.zero.float() + 0.25, q.bits, q.group)


# -------------------------------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_pack_unpack_round_trips_for_every_layout(weight, bits, group):
    k = 96 * 2 if group == 32 else K  # 6 blocks of 32: also an odd/even mix of zero-point bytes below
    q = rtn(weight[:, :k], bits, group, symmetric=False)
    codes = q.codes.numpy()
    b = pack.pack_matmulnbits_b(q)
    assert b.shape == (N, k // group, group * bits // 8) and b.dtype == np.uint8
    assert np.array_equal(pack.unpack_matmulnbits_b(b, bits), codes)
    z = pack.pack_zero_points(q)
    assert np.array_equal(pack.unpack_zero_points(z, k // group, bits), q.zero.numpy())
    assert np.array_equal(pack.unpack_gather_data(pack.pack_gather_data(q), bits), codes)
    # DequantizeLinear initializers: through onnx's own int4 packing and back
    for qq in (q, rtn(weight[:, :k], bits, group, symmetric=True)):
        w = numpy_helper.to_array(numpy_helper.from_array(pack.dq_weight(qq)))
        assert w.shape == (k, N)
        assert np.array_equal(pack.dq_codes(w, None, bits), qq.codes.numpy())
    zp = numpy_helper.to_array(numpy_helper.from_array(pack.dq_zero_point(q)))
    assert np.array_equal(zp.astype(np.uint8).T, q.zero.numpy())


@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_codes_and_packing_match_onnxruntime_quantizer(weight, symmetric):
    """Our RTN + MatMulNBits packing give the bytes ONNX Runtime's own 4-bit quantizer writes."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    group = 32
    w_kn = np.ascontiguousarray(weight.T.numpy())  # (K, N), as the MatMul stores it
    packed = np.zeros((N, K // group, group // 2), dtype=np.uint8)
    zeros = np.zeros((N, (K // group + 1) // 2), dtype=np.uint8)
    scales = np.zeros((N, K // group), dtype=np.float32)
    quantize_matmul_4bits(packed, w_kn, scales, zeros, group, N, K, symmetric)
    q = rtn(weight, 4, group, symmetric)
    np.testing.assert_allclose(q.scales.numpy(), scales, rtol=1e-6)
    mismatched = (pack.pack_matmulnbits_b(q) != packed).mean()
    assert mismatched < 1e-3  # ties at .5 may round differently
    if not symmetric:
        assert np.array_equal(pack.pack_zero_points(q), zeros)


# ------------------------------------------------------------------------------------------------------- graph forms
def _linear_graph(w: torch.Tensor, q: QuantizedWeight, form: str, level=AccuracyLevel.EXACT) -> onnx.ModelProto:
    n, k = w.shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "Wt"], ["y"])], "linear", [x], [y],
                              [numpy_helper.from_array(w.T.numpy().copy(), "Wt")])
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 21)])
    attach_initializers(model, quantize_graph(model, {"Wt": source_from_codes("lin", q)}, form, level=level))
    return model


def _run_ort(model: onnx.ModelProto, feeds: dict, optimize: bool = True) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    if not optimize:  # ORT fuses DequantizeLinear+MatMul into MatMulNBits with int8 activations by default
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


FORMS = [("ort", True), ("ort", False), ("ort", "float"), ("onnx", True), ("onnx", False), ("onnx", "float"),
         ("trt", True)]


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("form,symmetric", FORMS)
def test_quantized_linear_in_each_graph_form_equals_its_dequantized_reference(weight, form, symmetric, group):
    q = rtn(weight, 4, group, symmetric is True)
    if symmetric == "float":
        q = _float_zero(q)
    x = np.random.default_rng(0).standard_normal((2, 3, K)).astype(np.float32)
    model = _linear_graph(weight, q, form)
    # trt: fp16 scales, product rounded to fp16 by the DequantizeLinear, then cast to the fp32 activations
    deq = q.dequantize(torch.float16 if form == "trt" else torch.float32).numpy()
    expected = x @ deq.T
    if form == "ort":
        got = _run_ort(model, {"x": x})[0]
    else:
        got = ReferenceEvaluator(model).run(None, {"x": x})[0]
        np.testing.assert_allclose(_run_ort(model, {"x": x}, optimize=False)[0], expected, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)
    if form == "ort" and symmetric == "float":  # fast kernel (no float zero points) + block-sum correction
        nbits = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
        assert len(nbits.input) == 3 and "ReduceSum" in {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("symmetric", [True, False, "float"])
def test_int8_activation_level_stays_within_activation_quantization_error(weight, symmetric):
    q = rtn(weight, 4, 32, symmetric is True)
    if symmetric == "float":
        q = _float_zero(q)
    x = np.random.default_rng(1).standard_normal((2, 3, K)).astype(np.float32)
    got = _run_ort(_linear_graph(weight, q, "ort", AccuracyLevel.INT8), {"x": x})[0]
    expected = x @ q.dequantize().numpy().T
    # x quantized to int8 per block of 32 (absmax/127): error ~ |x|max/254 per element, summed over K at random sign
    bound = 4 * np.abs(x).max() / 254 * np.sqrt(K) * np.abs(q.dequantize().numpy()).max()
    assert np.abs(got - expected).max() < bound
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()


@pytest.mark.parametrize("form", ["ort", "onnx", "trt"])
@pytest.mark.parametrize("bits", [8, 4])
def test_tied_head_and_embedding_forms_equal_their_dequantized_table(form, bits):
    torch.manual_seed(1)
    vocab, hidden = 40, 64
    table = torch.randn(vocab, hidden)
    q = rtn(table, bits, 32, symmetric=True)
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3]),
              helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, hidden])]
    outputs = [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [2, 3, hidden]),
               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3, vocab])]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"]), helper.make_node("MatMul", ["x", "Et"], ["logits"])]
    inits = [numpy_helper.from_array(table.numpy(), "E"), numpy_helper.from_array(table.T.numpy().copy(), "Et")]
    model = helper.make_model(helper.make_graph(nodes, "tied", inputs, outputs, inits),
                              opset_imports=[helper.make_operatorsetid("", 21)])
    src = source_from_codes("head", q)
    attach_initializers(model, quantize_graph(model, {"Et": src}, form, level=AccuracyLevel.EXACT,
                                              embeddings={"E": src}))
    assert {t.name for t in model.graph.initializer}.isdisjoint({"E", "Et"})
    ids = np.array([[0, 5, 39], [3, 3, 1]])
    x = np.random.default_rng(2).standard_normal((2, 3, hidden)).astype(np.float32)
    deq = q.dequantize(torch.float16 if form == "trt" else torch.float32).numpy()
    emb, logits = _run_ort(model, {"ids": ids, "x": x}, optimize=form == "ort")
    np.testing.assert_allclose(emb, deq[ids], atol=1e-6)
    np.testing.assert_allclose(logits, x @ deq.T, atol=1e-4, rtol=1e-5)
    ops = {n.op_type for n in model.graph.node}
    assert ({"MatMulNBits", "GatherBlockQuantized"} <= ops) if form == "ort" else ("DequantizeLinear" in ops)


# ----------------------------------------------------------------------------------------------------------- options
LINEARS = {"model.layers.0.self_attn.qkv_proj.weight": (960, 576), "model.layers.0.mlp.down_proj.weight": (576, 1536)}


def test_group_size_not_dividing_k_is_refused_naming_the_tensor_and_the_fix():
    with pytest.raises(LlamaportError, match=r"--group-size 128 does not divide the 576 input features of weight "
                                             r"'model.layers.0.self_attn.qkv_proj.weight'; use --group-size 64"):
        resolve_spec(QuantSpec(group_size=128), "ort", LINEARS)


def test_default_group_size_is_the_largest_that_divides_every_linear():
    assert resolve_spec(QuantSpec(), "ort", LINEARS).group_size == 64
    assert resolve_spec(QuantSpec(), "trt", LINEARS).group_size == 64


@pytest.mark.parametrize("spec,message", [
    (QuantSpec(symmetric=False), "symmetric int4 weights only"),
    (QuantSpec(group_size=32), "use --group-size 64 or 128 for --target trt"),
    (QuantSpec(method=QuantMethod.GGUF), "use --method rtn or gptq"),
])
def test_options_tensorrt_cannot_take_are_refused_saying_which_to_use(spec, message):
    with pytest.raises(LlamaportError, match=message):
        resolve_spec(spec, "trt", LINEARS)


def test_bad_cli_values_are_one_clear_error(tmp_path):
    with pytest.raises(LlamaportError, match="--method 'awq' is not supported; use one of rtn, gptq, gguf"):
        parse_spec(method="awq")
    with pytest.raises(LlamaportError, match="--group-size 48"):
        parse_spec(group_size=48)
    with pytest.raises(LlamaportError, match="--calib .*no such file"):
        parse_spec(calib=tmp_path / "missing.txt")


# ----------------------------------------------------------------------------------------------------------- methods
def test_gptq_beats_rtn_on_the_layer_output_of_held_out_correlated_activations():
    """The layer objective GPTQ minimizes, measured on inputs it was not calibrated on (it must generalize)."""
    torch.manual_seed(0)
    k, n = 128, 64
    mix = torch.randn(k, k) / k ** 0.5 + torch.eye(k)  # correlated input features, as real activations are
    energy = torch.linspace(0.2, 3.0, k)  # uneven per-feature energy: what act_order exploits
    x, x_held = (torch.randn(2, 2048, k) * energy) @ mix
    w = torch.randn(n, k)
    hessian = x.double().T @ x.double() / x.shape[0]
    for symmetric in (True, False):
        err_rtn = (x_held @ (rtn(w, 4, 32, symmetric).dequantize() - w).T).pow(2).mean()
        for options in ({}, {"act_order": False}, {"clip": False}):
            q = gptq(w, hessian, 4, 32, symmetric, **options)
            err_gptq = (x_held @ (q.dequantize() - w).T).pow(2).mean()
            assert err_gptq < 0.8 * err_rtn, options


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_act_order_keeps_rtn_s_contiguous_block_layout(weight, symmetric):
    """Act order with static groups: a diagonal Hessian (no cross-feature error to spread) and no clipping give
    exactly RTN's codes, scales and zeros, although the columns are visited in a shuffled order; so the codes stay
    in contiguous K-blocks (no g_idx) and pack like RTN's."""
    torch.manual_seed(1)
    hessian = torch.diag(torch.rand(K) + 0.1).double()  # distinct diagonal: a non-trivial column order
    q = gptq(weight, hessian, 4, 32, symmetric, act_order=True, clip=False)
    ref = rtn(weight, 4, 32, symmetric)
    assert torch.equal(q.codes, ref.codes) and torch.allclose(q.scales, ref.scales)
    assert (q.zero is None) == symmetric and (symmetric or torch.equal(q.zero, ref.zero))
    assert np.array_equal(pack.unpack_matmulnbits_b(pack.pack_matmulnbits_b(q), 4), q.codes.numpy())


def test_gptq_clipping_never_rounds_worse_than_the_full_range(weight):
    """The clip search includes the full range (shrink 1.0), so each block's weighted error can only drop."""
    from llamaport.exporter.quant_methods import _block_params, _clipped_params, _codes

    w = weight.reshape(N, K // 32, 32)
    importance = torch.rand(K // 32, 32)
    for symmetric in (True, False):
        errs = []
        for scale, zero in (_block_params(w, 4, symmetric), _clipped_params(w, importance, 4, symmetric)):
            deq = (_codes(w, scale, zero, 4) - (8.0 if zero is None else zero)) * scale
            errs.append(((deq - w) ** 2 * importance).sum(-1))
        assert (errs[1] <= errs[0] + 1e-6).all() and errs[1].sum() < errs[0].sum()


@pytest.fixture(scope="module")
def tiny_tied(tmp_path_factory):
    from tiny import save_hf_model

    folder = tmp_path_factory.mktemp("tiny_q")
    save_hf_model(folder, "tied", intermediate_size=128)
    return folder


def test_eager_model_runs_the_exact_dequantized_weights(tiny_tied):
    from llamaport.models import load_model

    model = load_model(tiny_tied).fuse_projections()
    layer = model.model.layers[0].mlp
    q = rtn(layer.down_proj.weight, 4, 32, symmetric=False)
    quantize_model(model, {"model.layers.0.mlp.down_proj.weight": q})
    assert torch.equal(layer.down_proj.weight, q.dequantize())
    x = torch.randn(1, 3, 128)
    torch.testing.assert_close(layer.down_proj(x), x @ q.dequantize().T)


def test_gptq_streamed_from_the_checkpoint_equals_gptq_on_the_model_in_memory(tiny_tied):
    """Layer-by-layer calibration (one layer loaded at a time) computes the same codes as on the whole model."""
    from llamaport.exporter.quant_methods import gptq_checkpoint, gptq_model
    from llamaport.models import load_model, read_checkpoint

    ids = torch.randint(3, 96, (2, 16))
    streamed = gptq_checkpoint(read_checkpoint(tiny_tied), ids, 4, 32, symmetric=False)
    in_memory = gptq_model(load_model(tiny_tied).fuse_projections(), ids, 4, 32, symmetric=False)
    assert set(streamed) == set(in_memory) and "model.layers.1.mlp.gate_up_proj.weight" in streamed
    for name, q in streamed.items():
        torch.testing.assert_close(q.dequantize(), in_memory[name].dequantize(), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------- export pass
def _logits_through_graph(path, config, ids: np.ndarray, max_seq: int) -> np.ndarray:
    feeds = {"input_ids": ids, "past_lengths": np.zeros(len(ids), np.int64),
             "input_lengths": np.full(len(ids), ids.shape[1], np.int64)}
    for i in range(config.num_hidden_layers):
        for kind in ("key", "value"):
            feeds[f"past.{i}.{kind}"] = np.zeros((len(ids), config.num_key_value_heads, max_seq, config.head_dim),
                                                 np.float32)
    opts = ort.SessionOptions()
    # ORT rewrites DequantizeLinear+MatMul to MatMulNBits with int8 activations unless told the level
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], feeds)[0][:, -1]


@pytest.mark.parametrize("target", ["ort", "onnx"])
def test_int4_export_pass_graph_matches_the_dequantized_eager_model(tiny_tied, tmp_path, target):
    """trace -> quantize_traced -> write_graph streams packed weights; the graph equals eager on the same codes."""
    from llamaport.exporter.graph import GraphSpec, fake_model, trace_graph, write_graph
    from llamaport.exporter.quant_export import quantize_traced
    from llamaport.exporter.weights import parameter_sources
    from llamaport.models import read_checkpoint
    from llamaport.models.llama import LlamaForCausalLM
    from llamaport.models.loaders.checkpoint import materialize
    from llamaport.plugins.ops import use_plugin_attention

    checkpoint = read_checkpoint(tiny_tied)
    config = checkpoint.config
    model = fake_model(config, torch.float32, LlamaForCausalLM)
    use_plugin_attention(model)
    model.fuse_projections()
    traced = trace_graph(model, config, GraphSpec(target, 16, 1), torch.float32, parameter_sources(checkpoint, model))
    spec, codes = quantize_traced(traced, QuantSpec(accuracy_level=AccuracyLevel.EXACT), target, torch.float32, config)
    assert (spec.group_size, spec.symmetric) == (64, False)
    write_graph(traced, tmp_path / "model.onnx", target)
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert ("MatMulNBits" in ops and "GatherBlockQuantized" in ops) if target == "ort" else "DequantizeLinear" in ops
    # no float weight matrix is left (the rotary cos/sin table, (S_max, D/2), is not a weight)
    assert not [t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT and np.prod(t.dims) >= 64 * 64]
    reference = quantize_model(materialize(checkpoint).fuse_projections(), {name: f() for name, f in codes.items()})
    ids = np.array([[1, 5, 9, 22, 7, 3]])
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids))[:, -1].numpy()
    got = _logits_through_graph(tmp_path / "model.onnx", config, ids, 16)
    np.testing.assert_allclose(got, expected, atol=2e-5 * max(1.0, np.abs(expected).max()))


# ------------------------------------------------------------------------------------------------------------- GGUF
@pytest.mark.slow
def test_gguf_carried_codes_dequantize_to_ggufs_own_values(smollm_gguf):
    """Q4_1 (layer weights) and Q8_0 (embedding) blocks carried as codes/scales/zeros give gguf's dequantization
    (Q4_1 minimums as float zero points: within one float32 rounding), Q/K rows in the loader's order."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from llamaport.exporter.quant_methods import gguf_codes
    from llamaport.models import read_checkpoint
    from llamaport.models.loaders.permute import interleaved_to_half

    config = read_checkpoint(smollm_gguf).config
    get = gguf_codes(smollm_gguf, config)
    tensors = {t.name: t for t in GGUFReader(str(smollm_gguf)).tensors}
    cases = [("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", config.num_attention_heads),
             ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", config.num_key_value_heads),
             ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", None),
             ("token_embd.weight", "model.embed_tokens.weight", None)]
    for gguf_name, name, heads in cases:
        t = tensors[gguf_name]
        shape = tuple(int(d) for d in reversed(t.shape))
        expected = dequantize(t.data, t.tensor_type).reshape(shape)
        if heads:
            expected = interleaved_to_half(expected, heads)
        q = get(name)
        assert (q.bits, q.group, q.float_zero) == ((8, 32, False) if "embd" in gguf_name else (4, 32, True))
        np.testing.assert_allclose(q.dequantize().numpy(), expected, rtol=0, atol=4e-7 * np.abs(expected).max())


@pytest.mark.parametrize("target", ["ort", "onnx", "trt"])
def test_export_quant_int4_writes_a_verified_engine_that_records_its_quantization(tiny_tied, tmp_path, target):
    from click.testing import CliRunner

    from llamaport.cli import main
    from llamaport.enginedir import read_manifest

    folder = tiny_tied
    out = tmp_path / target
    result = CliRunner().invoke(main, ["export", str(folder), "-o", str(out), "--target", target, "--max-seq", "16",
                                       "--quant", "int4", "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest.quantization["bits"] == 4 and manifest.quantization["method"] == "rtn"
    assert manifest.quantization["symmetric"] is (target == "trt")  # TensorRT's int4 path is symmetric only
    assert manifest.verification["passed"]


@pytest.mark.parametrize("target", ["ort", "onnx"])
def test_verification_session_computes_int4_graphs_like_the_runtime_session(tiny_tied, tmp_path, target):
    """The low-memory session export verification uses (extended-level fusions, no constant folding, no
    prepacking) against the runtime's session, fed the same tokens: the same logits up to int8 activations (the
    runtime's packed MatMulNBits), never the all-zero logits prepacking gave `onnx` int4 graphs at that level."""
    from llamaport.enginedir import BackendName, read_manifest
    from llamaport.exporter.verify import Schedule, graph_greedy, graph_logits
    from llamaport.models import LlamaConfig
    from llamaport.runtime.backends import open_backend

    out = tmp_path / target
    export_engine(tiny_tied, out, ExportOptions(target=target, max_seq=16, quiet=True, verify=False, quant=QuantSpec()))
    manifest = read_manifest(out)
    schedule = Schedule.default(LlamaConfig.from_dict(manifest.config), 1, 16, 3)
    runtime, tokens = graph_greedy(open_backend(out, manifest, BackendName.ONNXRUNTIME), schedule)
    verifying = graph_logits(open_backend(out, manifest, BackendName.ONNXRUNTIME, low_memory=True), schedule, tokens)
    for expected, got in zip(runtime, verifying):
        assert np.abs(got).max() > 0
        np.testing.assert_allclose(got, expected, rtol=0, atol=0.05 * np.abs(expected).max())


def test_export_quant_int4_refuses_an_asymmetric_request_for_tensorrt_before_writing(tiny_tied, tmp_path):
    from llamaport.exporter import ExportOptions, export_engine

    folder = tiny_tied
    with pytest.raises(LlamaportError, match="symmetric"):
        export_engine(folder, tmp_path / "e", ExportOptions(target="trt", max_seq=16, quiet=True,
                                                            quant=QuantSpec(symmetric=False)))
    assert not (tmp_path / "e").exists()


def test_cli_symmetric_flag_writes_codes_without_zero_points_and_asymmetric_is_refused_for_tensorrt(tiny_tied,
                                                                                                      tmp_path):
    import onnx
    from click.testing import CliRunner

    from llamaport.cli import main
    from llamaport.enginedir import read_manifest

    def export(*flags):
        return CliRunner().invoke(main, ["export", str(tiny_tied), "-o", str(tmp_path / flags[1]), "--max-seq", "16",
                                         "--quant", "int4", "--quiet", *flags])

    result = export("--target", "ort", "--symmetric")
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "ort").quantization["symmetric"] is True
    graph = onnx.load(str(tmp_path / "ort" / "model.onnx"), load_external_data=False).graph
    assert {len(n.input) for n in graph.node if n.op_type == "MatMulNBits"} == {3}  # x, codes, scales: no zeros
    result = export("--target", "trt", "--asymmetric")
    assert result.exit_code == 1 and "drop --asymmetric" in result.output
    assert not (tmp_path / "trt").exists()


def test_symmetry_flags_are_refused_for_gguf_codes():
    with pytest.raises(LlamaportError, match="drop --symmetric/--asymmetric"):
        resolve_spec(QuantSpec(method=QuantMethod.GGUF, symmetric=True), "ort", LINEARS)


def test_export_quant_int4_of_a_classifier_is_refused_naming_the_task(tiny_tied, tmp_path):
    from llamaport.exporter import ExportOptions, export_engine

    with pytest.raises(LlamaportError, match="--task sequence-classification"):
        export_engine(tiny_tied, tmp_path / "e", ExportOptions(task="sequence-classification", max_seq=16,
                                                               quiet=True, quant=QuantSpec()))
    assert not (tmp_path / "e").exists()
