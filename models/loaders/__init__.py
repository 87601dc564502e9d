"""Checkpoint loaders: Hugging Face folders, Meta's original release, GGUF. `read_checkpoint` picks by what SRC is."""

from __future__ import annotations

from pathlib import Path

import torch

from llamaport.errors import CheckpointError, LlamaportError
from ..llama import LlamaForCausalLM, LlamaForSequenceClassification
from .checkpoint import Checkpoint, materialize
from .gguf_file import read_gguf
from .hf import is_hf_folder, read_hf_folder
from .meta import is_meta_folder, read_meta_folder


def read_checkpoint(src: str | Path) -> Checkpoint:
    """Open SRC (a Hugging Face folder, a Meta folder with params.json, or a .gguf file) without reading weights."""
    path = Path(src)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".gguf" or _is_gguf(path):
            return read_gguf(path)
        raise CheckpointError(f"{path}: not a GGUF file; pass a .gguf file or a model folder")
    if is_meta_folder(path):
        return read_meta_folder(path)
    if is_hf_folder(path):
        return read_hf_folder(path)
    raise CheckpointError(
        f"{path}: not a model folder: expected config.json with safetensors weights (Hugging Face) "
        "or params.json with consolidated.NN.pth (Meta)"
    )


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def load_model(src: str | Path, dtype: torch.dtype = torch.float32, task: str = "causal-lm"):
    """The model for any checkpoint the loaders read, weights in `dtype`, in eval mode, without gradients.

    task "causal-lm" gives `LlamaForCausalLM`; "sequence-classification" gives `LlamaForSequenceClassification`.
    """
    classes = {"causal-lm": LlamaForCausalLM, "sequence-classification": LlamaForSequenceClassification}
    if task not in classes:
        raise LlamaportError(f"--task {task!r} is not supported; use one of {', '.join(classes)}")
    return materialize(read_checkpoint(src), dtype, classes[task])


__all__ = ["Checkpoint", "read_checkpoint", "load_model"]
