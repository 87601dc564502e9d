"""`llamaport convert` / `info`: round trips, and bad inputs that fail cleanly without half-written output."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from tiny import save_hf_model

from llamaport.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    save_hf_model(folder, "gqa")
    return folder


def test_convert_writes_a_folder_transformers_loads_with_the_same_logits(tiny_hf, tmp_path):
    from transformers import AutoModelForCausalLM

    result = run("convert", tiny_hf, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    ids = torch.randint(3, 96, (1, 7))
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(tiny_hf).eval()(input_ids=ids).logits
        b = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()(input_ids=ids).logits
    assert (a - b).abs().max().item() <= 1e-6


def test_convert_refuses_an_existing_output_unless_overwrite(tiny_hf, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    result = run("convert", tiny_hf, "-o", out)
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "user data"
    # --overwrite replaces only what llamaport wrote (issue 13): a user's folder is refused and left intact...
    result = run("convert", tiny_hf, "-o", out, "--overwrite")
    assert result.exit_code == 1 and "not written by llamaport" in result.output
    assert (out / "keep.txt").read_text() == "user data"
    # ...while a folder convert wrote is replaced.
    assert run("convert", tiny_hf, "-o", tmp_path / "ours").exit_code == 0
    assert run("convert", tiny_hf, "-o", tmp_path / "ours", "--overwrite").exit_code == 0
    assert (tmp_path / "ours" / "config.json").exists()


def test_info_prints_config_and_parameter_count(tiny_hf):
    result = run("info", tiny_hf, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["format"] == "hf" and report["config"]["num_key_value_heads"] == 2
    from transformers import AutoModelForCausalLM

    assert report["parameters"] == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_hf).parameters())


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _gguf_of_other_architecture(folder):
    import gguf

    path = folder / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


BAD_INPUTS = {
    "missing_config": (lambda d: (d / "config.json").unlink() or d, "missing config.json"),
    "missing_weights": (lambda d: (d / "model.safetensors").unlink() or d, "no weights found"),
    "truncated_weights": (lambda d: _truncate(d / "model.safetensors") or d, "truncated or corrupt"),
    "wrong_shape": (lambda d: _edit_config(d, intermediate_size=96) or d, "has shape"),
    "unknown_rope_type": (
        lambda d: _edit_config(d, rope_parameters={"rope_type": "spiral", "rope_theta": 1e4}) or d, "unknown rope type"
    ),
    "heads_not_divisible": (lambda d: _edit_config(d, num_key_value_heads=3) or d, "divisible"),
    "other_architecture_gguf": (_gguf_of_other_architecture, "not 'llama'"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_with_a_clear_message_and_leaves_no_output(case, tiny_hf, tmp_path):
    breaker, message = BAD_INPUTS[case]
    src = breaker(_copy(tiny_hf, tmp_path / "src"))
    out = tmp_path / "out"
    result = run("convert", src, "-o", out)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_sharded_safetensors_with_index_load_like_a_single_file(tmp_path):
    from llamaport.models import load_model

    hf = save_hf_model(tmp_path / "one", "gqa")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ids = torch.randint(3, 96, (1, 6))
    assert torch.equal(load_model(tmp_path / "sharded")(ids), load_model(tmp_path / "one")(ids))
