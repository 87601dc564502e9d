"""Hugging Face model folders: config.json + (sharded) safetensors, or pytorch_model*.bin as a fallback."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import torch

from llamaport.enginedir import TOKENIZER_FILES  # the tokenizer files a model folder and an engine dir carry
from llamaport.errors import CheckpointError

from ..config import LlamaConfig
from .checkpoint import Checkpoint



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


def _safetensors_one(path: Path, name: str) -> torch.Tensor:
    """One tensor, the file opened and closed around it: its mapped pages leave our RSS with it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e}); it is truncated or corrupt, re-download it") from None


def _safetensors_names(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except SafetensorError as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e}); it is truncated or corrupt, re-download it") from None


def _index(files: list[Path]) -> dict[str, Callable[[], torch.Tensor]]:
    """Name -> reader. safetensors are read per tensor; a .bin is loaded (mapped) once and indexed."""
    readers: dict[str, Callable[[], torch.Tensor]] = {}
    for path in files:
        if path.suffix == ".safetensors":
            readers.update({name: partial(_safetensors_one, path, name) for name in _safetensors_names(path)})
        else:
            state = dict(_torch_bin_stream(path))
            readers.update({name: partial(state.__getitem__, name) for name in state})
    return readers


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
    shapes = _safetensors_shapes(files)
    if shapes:  # a config that disagrees with the weights names its field now, before anything loads
        config.check_against_shapes(shapes, str(config_path))

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for path in files:
            stream = _safetensors_stream if path.suffix == ".safetensors" else _torch_bin_stream
            yield from stream(path)

    tokenizer_files = {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).exists()}
    kind = "bpe" if "tokenizer.json" in tokenizer_files else "sentencepiece" if "tokenizer.model" in tokenizer_files else None
    dtype = _stored_dtype(config_path)
    return Checkpoint(folder, "hf", config, tensors, tokenizer_files, dtype, kind, index=partial(_index, files))


def _safetensors_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Name -> shape from the safetensors headers (no tensor data read); empty for .bin files or a header we
    cannot read (the loaders then report that damage when the tensors are read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for path in files:
            if path.suffix != ".safetensors":
                return {}
            with safe_open(str(path), framework="numpy") as f:
                shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    except Exception:  # noqa: BLE001 - damage is reported by the tensor readers, with their own message
        return {}
    return shapes


def _stored_dtype(config_path: Path) -> str:
    data = json.loads(config_path.read_text())
    return str(data.get("torch_dtype") or data.get("dtype") or "unknown")
