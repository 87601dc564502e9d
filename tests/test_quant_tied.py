"""A tied LM head and token embedding in an int8/int4 `--target ort` engine store their codes once.

MatMulNBits' B (V, H/g, g*bits/8) and GatherBlockQuantized's data (V, H*bits/8) are the same bytes; the engine
writes them once and the embedding's initializer points at the head's stored bytes (quant_lowering.gather_nodes).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from llamaport.exporter import quant_export
from llamaport.exporter.quant import AccuracyLevel, QuantSpec
from llamaport.exporter.quant_lowering import attach_initializers, quantize_graph, source_from_codes
from llamaport.exporter.quant_methods import rtn
from llamaport.exporter.quant_pack import pack_gather_data, pack_matmulnbits_b

HEAD_BITS = {"int8": 8, "int4": 4}


@pytest.mark.parametrize("bits", [8, 4])
def test_head_codes_and_embedding_table_are_the_same_bytes(bits):
    q = rtn(torch.randn(40, 128), bits, 32, symmetric=True)
    b = pack_matmulnbits_b(q)  # (V, H/g, g*bits/8)
    assert b.shape == (40, 4, 32 * bits // 8)
    np.testing.assert_array_equal(b.reshape(40, -1), pack_gather_data(q))


@pytest.fixture(scope="module")
def tiny_tied(tmp_path_factory):
    from tiny import save_hf_model

    folder = tmp_path_factory.mktemp("tiny_tied")
    save_hf_model(folder, "tied", intermediate_size=128)
    return folder


def _write_engine(folder, out, lm_head: str, shared: bool):
    """trace -> quantize_traced -> write_graph as export does; shared=False writes the former two-copy form."""
    from llamaport.exporter.graph import GraphSpec, fake_model, trace_graph, write_graph
    from llamaport.exporter.weights import parameter_sources
    from llamaport.models import read_checkpoint
    from llamaport.models.llama import LlamaForCausalLM
    from llamaport.plugins.ops import use_plugin_attention

    checkpoint = read_checkpoint(folder)
    config = checkpoint.config
    model = fake_model(config, torch.float32, LlamaForCausalLM)
    use_plugin_attention(model)
    model.fuse_projections()
    traced = trace_graph(model, config, GraphSpec("ort", 16, 1), torch.float32, parameter_sources(checkpoint, model))
    gather_nodes = quant_export.gather_nodes
    with pytest.MonkeyPatch.context() as mp:
        if not shared:
            mp.setattr(quant_export, "gather_nodes", lambda *a, tied=False, **k: gather_nodes(*a, **k))
        quant_export.quantize_traced(traced, QuantSpec(lm_head=lm_head), "ort", torch.float32, config)
    out.mkdir()
    write_graph(traced, out / "model.onnx", "ort")
    return config


def _table_and_head_codes(graph: onnx.GraphProto) -> tuple[TensorProto, TensorProto]:
    """The embedding's data initializer and the head's B, checking that both read the same scales."""
    inits = {t.name: t for t in graph.initializer}
    (gather,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    (head,) = [n for n in graph.node if n.op_type == "MatMulNBits" and n.output[0] == "logits"]
    assert gather.input[2] == head.input[2]  # the scales were already shared
    return inits[gather.input[0]], inits[head.input[1]]


def _logits(path, config, ids: np.ndarray) -> np.ndarray:
    feeds = {"input_ids": ids, "past_lengths": np.zeros(len(ids), np.int64),
             "input_lengths": np.full(len(ids), ids.shape[1], np.int64)}
    for i in range(config.num_hidden_layers):
        for kind in ("key", "value"):
            feeds[f"past.{i}.{kind}"] = np.zeros((len(ids), config.num_key_value_heads, 16, config.head_dim),
                                                 np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as the runtime: folding, prepacking
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]


@pytest.mark.parametrize("lm_head", ["int8", "int4"])
def test_tied_head_engine_stores_the_codes_once_with_the_same_logits(tiny_tied, tmp_path, lm_head):
    config = _write_engine(tiny_tied, tmp_path / "shared", lm_head, shared=True)
    _write_engine(tiny_tied, tmp_path / "two", lm_head, shared=False)
    graph = onnx.load(str(tmp_path / "shared" / "model.onnx"), load_external_data=False).graph
    data, b = _table_and_head_codes(graph)
    # one stored copy: the embedding's initializer is the head's bytes seen as (V, H*bits/8), no Reshape left
    assert data.external_data == b.external_data and data.data_location == TensorProto.EXTERNAL
    bits = HEAD_BITS[lm_head]
    assert list(b.dims) == [config.vocab_size, config.hidden_size // 64, 64 * bits // 8]
    assert list(data.dims) == [config.vocab_size, config.hidden_size * bits // 8]
    assert not [n for n in graph.node if n.op_type == "Reshape" and n.input[0] == b.name]
    size = {form: (tmp_path / form / "model.onnx.data").stat().st_size for form in ("shared", "two")}
    assert size["two"] - size["shared"] == config.vocab_size * config.hidden_size * bits // 8
    ids = np.array([[1, 5, 9, 95, 7, 3], [0, 2, 2, 40, 41, 80]])
    np.testing.assert_array_equal(_logits(tmp_path / "shared" / "model.onnx", config, ids),
                                  _logits(tmp_path / "two" / "model.onnx", config, ids))


def test_tied_int4_head_export_verifies(tiny_tied, tmp_path):
    from click.testing import CliRunner

    from llamaport.cli import main
    from llamaport.enginedir import read_manifest

    out = tmp_path / "e"
    result = CliRunner().invoke(main, ["export", str(tiny_tied), "-o", str(out), "--target", "ort", "--max-seq", "16",
                                       "--quant", "int4", "--lm-head", "int4", "--quiet"])
    assert result.exit_code == 0, result.output
    assert read_manifest(out).verification["passed"]
    data, b = _table_and_head_codes(onnx.load(str(out / "model.onnx"), load_external_data=False).graph)
    assert data.external_data == b.external_data


def test_untied_embedding_keeps_its_own_table():
    """Only a source shared with the head reads the head's codes; a separate embedding gathers its own table."""
    vocab, hidden = 40, 64
    head, table = (rtn(torch.randn(vocab, hidden), 8, 32, symmetric=True) for _ in range(2))
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 2]),
              helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, hidden])]
    outputs = [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, 2, hidden]),
               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, vocab])]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"]), helper.make_node("MatMul", ["x", "Et"], ["logits"])]
    inits = [numpy_helper.from_array(np.zeros((vocab, hidden), np.float32), "E"),
             numpy_helper.from_array(np.zeros((hidden, vocab), np.float32), "Et")]
    model = helper.make_model(helper.make_graph(nodes, "untied", inputs, outputs, inits),
                              opset_imports=[helper.make_operatorsetid("", 21)])
    attach_initializers(model, quantize_graph(model, {"Et": source_from_codes("head", head)}, "ort",
                                              level=AccuracyLevel.EXACT,
                                              embeddings={"E": source_from_codes("embed", table)}))
    (gather,) = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert gather.input[0] == "embed.g8" and "Reshape" not in {n.op_type for n in model.graph.node}
