"""An int4 export records what its weights cost against the checkpoint's own (perplexity, KL, top-1)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from tiny import save_hf_model

from llamaport.exporter import ExportOptions, export_engine
from llamaport.exporter.quant import QuantSpec
from llamaport.exporter.quant_quality import weight_quality
from llamaport.exporter.reference import layerwise_logits, schedule_steps
from llamaport.models import read_checkpoint

INT4 = QuantSpec(group_size=32)


@pytest.fixture(scope="module")
def int4_checkpoint(tiny_engine, tmp_path_factory):
    """The tiny GQA model with 128-wide MLP (group 32 divides every K), and tiny_engine's word-level tokenizer."""
    folder = tmp_path_factory.mktemp("int4") / "hf"
    save_hf_model(folder, "gqa", intermediate_size=128)
    shutil.copy(tiny_engine[0] / "tokenizer.json", folder / "tokenizer.json")
    return folder


def test_int4_export_records_quality_against_the_checkpoint_in_the_manifest(int4_checkpoint, tmp_path):
    manifest = export_engine(int4_checkpoint, tmp_path / "e", ExportOptions(target="ort", max_seq=32, quant=INT4,
                                                                       quiet=True))
    quality = manifest["quantization"]["quality"]
    assert quality["measured"] and quality["text_tokens"] > 2
    assert quality["kl"] > 0 and 0 <= quality["top1_agreement"] <= 1
    assert math.isfinite(quality["perplexity_reference"]) and math.isfinite(quality["perplexity_quantized"])


def test_int4_export_without_a_tokenizer_says_quality_was_not_measured(int4_checkpoint, tmp_path):
    source = tmp_path / "hf"
    shutil.copytree(int4_checkpoint, source)
    (source / "tokenizer.json").unlink()
    manifest = export_engine(source, tmp_path / "e", ExportOptions(target="ort", max_seq=32, quant=INT4, quiet=True))
    assert manifest["quantization"]["quality"] == {
        "measured": False, "reason": "the checkpoint has no tokenizer files to tokenize the text"}


def test_quality_of_unchanged_weights_is_perfect(tiny_engine):
    checkpoint = read_checkpoint(tiny_engine[0])
    quality = weight_quality(checkpoint, checkpoint, [1, 5, 9, 11, 3, 7, 4])
    assert quality["kl"] < 1e-9 and quality["top1_agreement"] == 1
    assert quality["perplexity_reference"] == quality["perplexity_quantized"]


def test_layerwise_logits_at_every_position_end_with_the_last_token_logits(tiny_engine):
    checkpoint = read_checkpoint(tiny_engine[0])
    steps = schedule_steps([[1, 5, 9, 11]], [])
    last = layerwise_logits(checkpoint, steps)[0]  # (1, V)
    every = layerwise_logits(checkpoint, steps, all_positions=True)[0]  # (1, 4, V)
    assert every.shape[:2] == (1, 4)
    torch.testing.assert_close(torch.from_numpy(every[:, -1]), torch.from_numpy(last))
