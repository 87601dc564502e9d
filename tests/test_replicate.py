"""Tracing a few decoder layers and cloning the last one (exporter/replicate.py) gives the graph a full trace gives:
same ops and attributes, initializers, inputs and outputs, weight sources, and the same logits when run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from tiny import save_hf_model

from llamaport.exporter import graph as G
from llamaport.exporter import replicate as R
from llamaport.exporter.weights import parameter_sources
from llamaport.models import read_checkpoint
from llamaport.models.llama import LlamaForCausalLM
from llamaport.plugins.ops import use_plugin_attention

LAYERS, MAX_SEQ = 4, 16  # 4 layers: layers 0-2 traced, layer 3 cloned
TARGETS = ["onnx", "ort", "trt", "trt-native"]
# (variant, target, layers). Every target on GQA, and each other variant on the target where it changes most:
# heads in the attention lowerings, the tied head among the initializers, llama3's rotary table, dynamic NTK's
# frequencies computed in the graph (and ort's lowering without a table). All 24 variant/target pairs pass at 4
# layers too; CI runs these (~4 s each). Two have 6 layers: clones of clones, names moved on more than one layer.
CASES = [("gqa", target, 6 if target in ("ort", "trt-native") else LAYERS) for target in TARGETS] + [
    ("mha", "trt-native", LAYERS), ("mqa", "ort", LAYERS), ("tied", "onnx", LAYERS), ("rope_llama3", "trt", LAYERS),
    ("rope_dynamic", "ort", LAYERS)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """variant -> its tiny checkpoint (read; 4 layers unless `more` says otherwise), written on first use."""
    root, made = tmp_path_factory.mktemp("replicate"), {}

    def get(variant: str, **more):
        more = {"num_hidden_layers": LAYERS} | more
        name = "-".join([variant, *(f"{k}{v}" for k, v in sorted(more.items()))])
        if name not in made:
            save_hf_model(root / name, variant, **more)
            made[name] = read_checkpoint(root / name)
        return made[name]

    return get


def _trace(checkpoint, target: str, replicate: bool) -> G.TracedGraph:
    config = checkpoint.config
    model = G.fake_model(config, torch.float32, LlamaForCausalLM)
    use_plugin_attention(model).fuse_projections()
    return G.trace_graph(model, config, G.GraphSpec(target, MAX_SEQ, 2), torch.float32,
                         parameter_sources(checkpoint, model), replicate=replicate)


@pytest.fixture
def replications(monkeypatch) -> list[int]:
    """Layer counts replicate_layers grew a graph to (so a test knows no silent fallback to a full trace ran)."""
    grown = []

    def spy(model, num_layers):
        R.replicate_layers(model, num_layers)
        grown.append(num_layers)

    monkeypatch.setattr(G, "replicate_layers", spy)
    return grown


def _structure(model) -> tuple:
    """Everything but node and intermediate value names (those follow torch's per-op counters, some of which
    count ops that leave no trace in the graph)."""
    graph = model.graph
    nodes = [(n.op_type, n.domain, sorted((k, str(a)) for k, a in n.attributes.items())) for n in graph]
    initializers = [(name, tuple(v.shape), v.dtype) for name, v in graph.initializers.items()]
    io = [[(v.name, str(v.shape), v.dtype) for v in values] for values in (graph.inputs, graph.outputs)]
    return nodes, initializers, io


def _feeds(config, seed: int = 0) -> dict[str, np.ndarray]:
    """A prefill of two right-padded rows (ONNX Runtime's GroupQueryAttention takes a batch of prompts only on an
    empty cache), over random caches."""
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(3, config.vocab_size, (2, 5)).astype(np.int64),
             "past_lengths": np.array([0, 0], np.int64), "input_lengths": np.array([5, 3], np.int64)}
    shape = (2, config.num_key_value_heads, MAX_SEQ, config.head_dim)
    for layer in range(config.num_hidden_layers):
        for kind in ("key", "value"):
            feeds[f"past.{layer}.{kind}"] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _run(path: Path, target: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    if target in ("trt", "trt-native"):  # TensorRT's ops run in ONNX's reference evaluator, as verify does
        from onnx.reference import ReferenceEvaluator

        from llamaport.plugins.reference_numpy import REFERENCE_OPS
        from llamaport.plugins.reference_trt_native import REFERENCE_OPS as TRT_NATIVE_OPS

        return ReferenceEvaluator(onnx.load(str(path)), new_ops=[*REFERENCE_OPS, *TRT_NATIVE_OPS]).run(None, feeds)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one thread: the same graph gives the same bits
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("variant,target,layers", CASES)
def test_grown_graph_is_the_full_trace_and_computes_the_same_logits(variant, target, layers, checkpoint,
                                                                    replications, tmp_path):
    ckpt = checkpoint(variant, num_hidden_layers=layers)
    full = _trace(ckpt, target, replicate=False)
    grown = _trace(ckpt, target, replicate=True)
    assert replications == [layers]
    assert _structure(grown.model) == _structure(full.model)
    assert [(n, s.shape, s.dtype, s.layer) for n, s in grown.sources.items()] == \
        [(n, s.shape, s.dtype, s.layer) for n, s in full.sources.items()]
    outputs = {}
    for name, traced in (("full", full), ("grown", grown)):
        (tmp_path / name).mkdir()
        G.write_graph(traced, tmp_path / name / "model.onnx", target)
        outputs[name] = _run(tmp_path / name / "model.onnx", target, _feeds(ckpt.config))
    assert len(outputs["grown"]) == 1 + 2 * layers
    for want, got in zip(outputs["full"], outputs["grown"]):
        assert np.array_equal(want, got)


def test_grown_export_is_the_same_bytes_every_time(checkpoint, replications, tmp_path):
    ckpt = checkpoint("gqa")
    written = []
    for run in range(2):
        path = tmp_path / str(run) / "model.onnx"
        path.parent.mkdir()
        G.write_graph(_trace(ckpt, "ort", replicate=True), path, "ort")
        written.append((path.read_bytes(), (path.parent / "model.onnx.data").read_bytes()))
    assert replications == [LAYERS, LAYERS]
    assert written[0] == written[1]


def test_int4_pass_finds_every_linear_of_the_grown_graph(checkpoint, replications):
    from llamaport.exporter.quant import QuantSpec
    from llamaport.exporter.quant_export import quantize_traced

    ckpt = checkpoint("tied", intermediate_size=128)  # int4 blocks of 32..128 need K divisible by one of them
    results = []
    for replicate in (False, True):
        traced = _trace(ckpt, "ort", replicate)
        _, codes = quantize_traced(traced, QuantSpec(), "ort", torch.float32, ckpt.config)
        results.append((_structure(traced.model), sorted(codes), sorted(traced.sources)))
    assert replications == [LAYERS]
    assert results[0] == results[1]
    # qkv, o, gate_up, down per layer, and the tied head (int8 by default)
    assert sum(op == "MatMulNBits" for op, _, _ in results[1][0][0]) == 4 * LAYERS + 1


def test_models_of_three_layers_or_fewer_and_classifiers_are_traced_whole(checkpoint):
    config = checkpoint("gqa").config
    spec = G.GraphSpec("ort", MAX_SEQ, 1)
    three = dataclasses.replace(config, num_hidden_layers=R.TRACED_LAYERS)
    assert G._replicated(None, three, spec, torch.float32, {}, {}) is None
    classifier = G.GraphSpec("ort", MAX_SEQ, 1, task="sequence-classification")
    assert G._replicated(None, config, classifier, torch.float32, {}, {}) is None


def test_layers_that_differ_are_refused_and_the_graph_left_as_traced(checkpoint):
    config = dataclasses.replace(checkpoint("gqa").config, num_hidden_layers=R.TRACED_LAYERS)
    spec = G.GraphSpec("onnx", MAX_SEQ, 1)
    model = G.fake_model(config, torch.float32, LlamaForCausalLM)
    use_plugin_attention(model).fuse_projections()
    traced = G._export(G.graph_module(model, spec), config, spec, torch.float32,
                       G.target_table(config, spec, torch.float32))
    norm = next(n for n in traced.graph if n.op_type == "RMSNormalization" and R._layer_of(n) == 2)
    norm.attributes["epsilon"] = ir.AttrFloat32("epsilon", 1e-3)  # layer 2 no longer runs layer 1's code
    for weight in traced.graph.initializers.values():
        weight.const_value = None  # fake: not serializable
    before = ir.to_proto(traced).SerializeToString()
    with pytest.raises(R.NotReplicable, match="attributes"):
        R.replicate_layers(traced, 6)
    assert ir.to_proto(traced).SerializeToString() == before
