"""`llamaport export`: every target traces from the same model code and matches eager logits."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from tiny import save_hf_model

from llamaport.cli import main
from llamaport.exporter import ExportOptions, export_engine
from llamaport.enginedir import read_manifest
from llamaport.exporter.verify import Schedule, eager_logits, graph_logits, open_graph
from llamaport.models import load_model

TARGET_OPS = {"onnx": {"Attention", "TensorScatter", "RotaryEmbedding"}, "ort": {"GroupQueryAttention"},
              "trt": {"GQAAttention"}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {v: save_hf_model(root / v, v) and root / v for v in ("mha", "gqa", "mqa", "rope_llama3", "rope_dynamic", "tied")}


@pytest.mark.parametrize("target", ["onnx", "ort", "trt"])
@pytest.mark.parametrize("variant", ["mha", "gqa", "mqa", "rope_llama3", "rope_dynamic", "tied"])
def test_fp32_graph_matches_eager_over_prefill_and_16_decode_steps(variant, target, checkpoints, tmp_path):
    out = tmp_path / "engine"
    manifest = export_engine(checkpoints[variant], out, ExportOptions(target=target, max_seq=32, max_batch=2))
    assert manifest["verification"]["passed"]
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node}
    assert TARGET_OPS[target] <= ops

    schedule = Schedule([[5, 9, 11, 3, 7], [4, 8, 2]], steps=16)  # batch 2, prompts of different lengths
    expected, tokens = eager_logits(load_model(checkpoints[variant]), schedule, 32)
    got = graph_logits(open_graph(out, read_manifest(out)), schedule, tokens)
    diffs = [float(np.abs(e - g).max()) for e, g in zip(expected, got)]
    assert len(diffs) == 17 and max(diffs) <= 1e-4, diffs


@pytest.mark.parametrize("variant", ["gqa", "rope_dynamic"])
def test_ort_graph_fuses_residual_norms_and_applies_rope_inside_packed_gqa_unless_dynamic(variant, checkpoints, tmp_path):
    export_engine(checkpoints[variant], tmp_path / "e", ExportOptions(target="ort", max_seq=32, max_batch=2, verify=False))
    graph = onnx.load(str(tmp_path / "e" / "model.onnx"), load_external_data=False).graph
    gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    ops = {n.op_type for n in graph.node}
    assert len(gqa) == 2
    # Every residual Add + RMSNorm is fused; only the first norm, on the embeddings, has no Add before it.
    norms = [n.op_type for n in graph.node if n.op_type.endswith("Normalization")]
    assert norms.count("SkipSimplifiedLayerNormalization") == 4 and norms.count("RMSNormalization") == 1
    if variant == "rope_dynamic":  # frequencies depend on the length: no table, RoPE stays a separate op
        assert "RotaryEmbedding" in ops
    else:  # rotary tables in, qkv packed (the Split of the fused projection is gone)
        assert "RotaryEmbedding" not in ops
        assert all(n.input[1] == "" and n.input[2] == "" and n.input[7] and n.input[8] for n in gqa)


@pytest.mark.parametrize("target", ["onnx", "ort"])
def test_fp16_graph_agrees_with_fp32_eager_top1_on_every_step(target, checkpoints, tmp_path):
    out = tmp_path / "engine"
    export_engine(checkpoints["gqa"], out, ExportOptions(target=target, dtype="fp16", max_seq=32, max_batch=2, verify_steps=16))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "fp16" and manifest["verification"]["top1_agreement"] == 1.0
    assert manifest["verification"]["steps"] == 16
    cache_inputs = [i for i in manifest["inputs"] if i["name"].startswith("past.")]
    assert {i["dtype"] for i in cache_inputs} == {"float16"}


def test_fp32_verification_tolerance_scales_with_logit_magnitude():
    from llamaport.exporter.verify import compare

    small = np.random.default_rng(0).uniform(-1, 1, (2, 50)).astype(np.float32)
    large = small * 30  # |logits| up to ~30, like a trained model's
    assert not compare([small], [small + 1.5e-4], "fp32", "test").passed
    assert compare([large], [large + 1.5e-4], "fp32", "test").passed
    assert not compare([large], [large + 1e-2], "fp32", "test").passed


def test_manifest_describes_io_files_and_verification(checkpoints, tmp_path):
    out = tmp_path / "engine"
    export_engine(checkpoints["gqa"], out, ExportOptions(max_seq=32))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "llamaport-engine" and manifest["format_version"] == 2
    assert manifest["max_seq"] == 32 and manifest["target"] == "onnx"
    names = [i["name"] for i in manifest["inputs"]]
    assert names[:3] == ["input_ids", "past_lengths", "input_lengths"] and "past.1.value" in names
    assert manifest["inputs"][3]["shape"][1:] == [2, 32, 16]
    assert set(manifest["files"]) == {"model.onnx", "model.onnx.data", "generation_config.json"}
    assert manifest["verification"]["max_abs_logit_diff"] <= 1e-4


def test_exporting_twice_gives_byte_identical_files(checkpoints, tmp_path):
    for name in ("a", "b"):
        export_engine(checkpoints["gqa"], tmp_path / name, ExportOptions(max_seq=32))
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name


def test_sequence_classification_export_matches_eager(tmp_path):
    import onnxruntime as ort
    import torch

    save_hf_model(tmp_path / "cls", "gqa", cls_name="LlamaForSequenceClassification", pad_token_id=0, num_labels=3)
    export_engine(tmp_path / "cls", tmp_path / "engine", ExportOptions(task="sequence-classification", max_seq=32, max_batch=2))
    ids = np.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]], dtype=np.int64)
    session = ort.InferenceSession(str(tmp_path / "engine" / "model.onnx"))
    got = session.run(None, {"input_ids": ids})[0]
    expected = load_model(tmp_path / "cls", task="sequence-classification")(torch.from_numpy(ids)).numpy()
    assert got.shape == (2, 3) and np.abs(got - expected).max() <= 1e-4


def _run(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


def test_max_seq_beyond_the_model_limit_is_a_clear_error(checkpoints, tmp_path):
    result = _run(checkpoints["gqa"], "-o", tmp_path / "e", "--max-seq", 100)
    assert result.exit_code == 1 and "--max-seq 100 exceeds the 64 positions" in result.output
    assert not (tmp_path / "e").exists()


def test_unknown_target_is_a_clear_error(checkpoints, tmp_path):
    result = _run(checkpoints["gqa"], "-o", tmp_path / "e", "--target", "tflite")
    assert result.exit_code == 1 and "--target 'tflite' does not exist" in result.output


def test_existing_output_is_refused_unless_overwrite(checkpoints, tmp_path):
    (tmp_path / "e").mkdir()
    result = _run(checkpoints["gqa"], "-o", tmp_path / "e", "--max-seq", 32)
    assert result.exit_code == 1 and "--overwrite" in result.output
    result = _run(checkpoints["gqa"], "-o", tmp_path / "e", "--max-seq", 32, "--overwrite")
    assert result.exit_code == 0 and (tmp_path / "e" / "manifest.json").exists()


def test_unwritable_output_is_a_clear_error(checkpoints, tmp_path):
    # A regular file where a folder should be: unwritable even for root, which CI runs as.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = _run(checkpoints["gqa"], "-o", blocker / "e", "--max-seq", 32)
    assert result.exit_code == 1 and "writable" in result.output and "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnx", "ort"])
def test_smollm2_exports_and_verifies(target, smollm_engine):
    manifest = json.loads((smollm_engine(target) / "manifest.json").read_text())
    verification = manifest["verification"]
    assert verification["passed"] and verification["max_abs_logit_diff"] <= 2e-4  # measured 5e-5 (onnx), 1.1e-4 (ort)
    assert {"tokenizer.json", "chat_template.jinja"} <= set(manifest["files"])


def test_bf16_export_with_verification_is_refused_before_any_work(tmp_path):
    from llamaport.errors import LlamaportError

    folder = tmp_path / "src"
    save_hf_model(folder, "gqa")
    with pytest.raises(LlamaportError, match="--skip-verify"):
        export_engine(folder, tmp_path / "e", ExportOptions(dtype="bf16", max_seq=16, quiet=True))
    assert not (tmp_path / "e").exists()
