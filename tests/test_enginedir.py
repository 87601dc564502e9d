"""The engine-directory module: typed names, one threshold table, a manifest reader that validates, and an engine
directory that is checked when opened, so damage and tampering give one error naming the file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from llamaport import enginedir
from llamaport.cli import main
from llamaport.enginedir import DType, EngineDirError, LogitsMode, Target, Task
from llamaport.errors import LlamaportError
from llamaport.runtime import Engine, SamplingParams

FEW = SamplingParams(max_new_tokens=3, ignore_eos=True)


@pytest.fixture
def engine_copy(tiny_engine, tmp_path):
    """A copy of the session's tiny engine that a test may damage."""
    return shutil.copytree(tiny_engine[1], tmp_path / "engine")


def edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        elif key == "config":
            data["config"] |= value
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_enginedir_and_atomic_import_without_torch_or_onnx():
    script = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        sys.modules["onnx"] = None
        import llamaport.enginedir, llamaport.atomic
        assert "numpy" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_typed_names_parse_their_spellings_and_refuse_others_naming_flag_and_choices():
    assert enginedir.parse(Target, "ort", "--target") is Target.ORT
    assert enginedir.parse(DType, DType.FP16, "--dtype") is DType.FP16
    assert f"{Task.CAUSAL_LM}" == "causal-lm" and str(LogitsMode.ALL) == "all" and Target.TRT == "trt"
    assert json.dumps({"t": Target.ONNX}) == '{"t": "onnx"}'
    with pytest.raises(LlamaportError, match=r"--target 'tflite' does not exist; use one of onnx, ort, trt"):
        enginedir.parse(Target, "tflite", "--target")
    with pytest.raises(LlamaportError, match="--dtype"):
        enginedir.parse(DType, ["fp16"], "--dtype")


def test_cache_names_pair_each_past_input_with_its_present_output():
    assert enginedir.cache_names(2) == ["past.0.key", "past.0.value", "past.1.key", "past.1.value"]
    assert enginedir.present_for("past.11.value") == "present.11.value"
    assert enginedir.input_names(1, Task.CAUSAL_LM, LogitsMode.ALL) == ["input_ids", "past_lengths", "past.0.key",
                                                                        "past.0.value"]
    assert enginedir.output_names(1, "sequence-classification") == ["logits"]
    with pytest.raises(ValueError):
        enginedir.present_for("present.0.key")


def test_one_threshold_table_holds_export_and_check_bounds_per_dtype():
    fp32, fp16 = enginedir.thresholds("fp32"), enginedir.thresholds(DType.FP16)
    # Export verification: 1e-4 absolute, or 1e-5 of the largest |logit| when that is more; fp16 needs top-1.
    assert fp32.verify_tolerance(1.0) == 1e-4 and fp32.verify_tolerance(30.0) == pytest.approx(3e-4)
    assert fp32.verify_min_top1_agreement == 0.0 and fp16.verify_min_top1_agreement == 1.0
    assert fp16.verify_tolerance(1e6) == 0.5 and enginedir.thresholds("bf16").verify_tolerance(1.0) == 1.0
    # check: today's numbers, and failures name the metric and its bound.
    assert fp32.check.max_abs_diff == 1e-3 and fp16.check.greedy_match == 0.75
    assert fp32.check.failures({"max_abs_diff": 2e-3, "cosine": 1.0}) == ["max_abs_diff 0.002 > 0.001"]
    with pytest.raises(LlamaportError, match="--dtype 'fp8'"):
        enginedir.thresholds("fp8")


def test_export_writes_a_version_2_manifest_recording_every_file_size(tiny_engine):
    folder = tiny_engine[1]
    manifest = enginedir.read_manifest(folder)
    assert manifest.format_version == enginedir.FORMAT_VERSION == 2
    assert manifest.target is Target.ONNX and manifest.dtype is DType.FP32 and manifest.max_seq == 32
    assert {"model.onnx", "model.onnx.data", "tokenizer.json"} <= set(manifest.files)
    for name, record in manifest.files.items():
        assert record.bytes == (folder / name).stat().st_size
        assert record.sha256 == enginedir.sha256(folder / name)
    assert manifest["dtype"] == "fp32" and manifest.get("source")  # mapping access to the JSON as written


def test_version_1_manifest_is_still_read(engine_copy):
    data = json.loads((engine_copy / "manifest.json").read_text())
    data["format_version"] = 1
    data["files"] = {name: record["sha256"] for name, record in data["files"].items()}
    (engine_copy / "manifest.json").write_text(json.dumps(data))
    assert len(Engine.open(engine_copy, verify=True).generate([5, 6], FEW).token_ids) == 3


def test_newer_format_version_is_refused_naming_the_file(engine_copy):
    edit_manifest(engine_copy, format_version=3)
    with pytest.raises(EngineDirError, match=r"manifest.json has format_version 3, newer .* upgrade llamaport"):
        Engine.open(engine_copy)


BAD_MANIFESTS = {
    "not_json": (lambda p: p.write_text("{\"format\": "), "is not valid JSON"),
    "not_an_engine": (lambda p: p.write_text("{}"), "is not a llamaport engine manifest"),
    "missing_max_seq": (lambda p: edit_manifest(p.parent, max_seq=None), "missing 'max_seq'"),
    "max_seq_a_string": (lambda p: edit_manifest(p.parent, max_seq="32"), "'max_seq' must be a positive integer"),
    "unknown_target": (lambda p: edit_manifest(p.parent, target="tflite"), "'target' 'tflite' is not one of"),
    "vocab_size_negative": (lambda p: edit_manifest(p.parent, config={"vocab_size": -1}), "'config.vocab_size'"),
    "file_outside_the_folder": (lambda p: edit_manifest(p.parent, files={"../x": {"sha256": "0" * 64, "bytes": 1}}),
                                "not a file of the engine directory"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_invalid_manifest_is_refused_naming_the_file_and_the_problem(case, engine_copy):
    breaker, message = BAD_MANIFESTS[case]
    breaker(engine_copy / "manifest.json")
    with pytest.raises(EngineDirError, match="manifest.json") as error:
        Engine.open(engine_copy)
    assert message in str(error.value) and "re-export" in str(error.value)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble_same_size(path):
    path.write_bytes(b"x" * path.stat().st_size)


DAMAGED = {
    "truncated_graph_data": (lambda d: _truncate(d / "model.onnx.data"), "model.onnx.data is"),
    "missing_graph": (lambda d: (d / "model.onnx").unlink(), "model.onnx is missing"),
    "missing_graph_data": (lambda d: (d / "model.onnx.data").unlink(), "model.onnx.data is missing"),
    "missing_manifest": (lambda d: (d / "manifest.json").unlink(), "has model.onnx but no manifest.json"),
    "corrupt_tokenizer": (lambda d: _garble_same_size(d / "tokenizer.json"), "tokenizer.json"),
    "max_seq_edited": (lambda d: edit_manifest(d, max_seq=99999), "max_seq 99999"),
    "vocab_size_edited": (lambda d: edit_manifest(d, config={"vocab_size": 128}), "logits with shape"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_engine_gives_one_error_naming_the_file_at_open(case, engine_copy):
    breaker, message = DAMAGED[case]
    breaker(engine_copy)
    with pytest.raises(EngineDirError, match="re-copy") as error:
        Engine.open(engine_copy)
    assert message in str(error.value) and "re-export" in str(error.value)
    result = CliRunner().invoke(main, ["generate", str(engine_copy), "-p", "w5 w6"])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_changed_byte_passes_the_size_check_and_is_caught_by_sha256(engine_copy, tmp_path):
    (tmp_path / "prompts.txt").write_text("w5 w6 w7\n")
    (tmp_path / "text.txt").write_text("w5 w6 w7 w8\n")
    data = engine_copy / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x40  # one flipped bit inside a weight: same size, different content
    data.write_bytes(bytes(raw))
    Engine.open(engine_copy)  # sizes match: an ordinary open does not hash gigabytes
    with pytest.raises(EngineDirError, match=r"model.onnx.data does not match the sha256 recorded in manifest.json"):
        Engine.open(engine_copy, verify=True)
    check = ["check", str(engine_copy), "--prompts", str(tmp_path / "prompts.txt"), "--text", str(tmp_path / "text.txt"),
             "--greedy-tokens", "2"]  # check reports the changed file among its failures
    for args in (["generate", str(engine_copy), "-p", "w5", "--verify"], check):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "does not match the sha256" in result.output, (args, result.output)
