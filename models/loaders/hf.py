"""Hugging Face model folders: config.json + (sharded) safetensors, or pytorch_model*.bin as a fallback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from ..config import LlamaConfig
from llamaport.errors import CheckpointError
from .checkpoint import Checkpoint

TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (
        (path / "config.json").exists()
        or any(path.glob("*.safetensors"))
        or any(path.glob("pytorch_model*.bin"))
    )


def weight_files(folder: Path) -> list[Path]:
    """The weight files in load order, from the index when there is one."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = folder / index_name
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid weight index ({e})") from None
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            absent = [f.name for f in files if not f.exists()]
            if absent:
                raise CheckpointError(f"{index} lists {absent} but they are not in {folder}; download every shard")
            return files
        if (folder / single).exists():
            return [folder / single]
    raise CheckpointError(
        f"{folder}: no weights found; expected model.safetensors, model-0000x-of-0000y.safetensors with "
        "model.safetensors.index.json, or pytorch_model.bin"
    )


def _safetensors_stream(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e}); it is truncated or corrupt, re-download it") from None


def _torch_bin_stream(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(f"{path}: unreadable PyTorch weight file ({e}); it is truncated or corrupt") from None
    yield from state.items()


def read_hf_folder(folder: Path) -> Checkpoint:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise CheckpointError(
            f"{folder}: missing config.json; a Hugging Face model folder needs config.json beside its weights"
        )
    config = LlamaConfig.from_json(config_path)
    files = weight_files(folder)

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for path in files:
            stream = _safetensors_stream if path.suffix == ".safetensors" else _torch_bin_stream
            yield from stream(path)

    tokenizer_files = {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).exists()}
    kind = "bpe" if "tokenizer.json" in tokenizer_files else "sentencepiece" if "tokenizer.model" in tokenizer_files else None
    dtype = _stored_dtype(config_path)
    return Checkpoint(folder, "hf", config, tensors, tokenizer_files, dtype, kind)


def _stored_dtype(config_path: Path) -> str:
    data = json.loads(config_path.read_text())
    return str(data.get("torch_dtype") or data.get("dtype") or "unknown")
