"""What every loader returns, and how a checkpoint becomes a module without holding two copies of the weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from functools import cached_property
from typing import Callable, Iterator

import torch

from ..config import LlamaConfig
from llamaport.errors import CheckpointError
from ..llama import LlamaForCausalLM
from ..rope import inverse_frequencies

TensorStream = Callable[[], Iterator[tuple[str, torch.Tensor]]]
# Hugging Face name -> a function that reads that one tensor (random access: the streaming exporter reads each
# tensor when it writes it, in the graph's order, not the file's).
TensorIndex = Callable[[], dict[str, Callable[[], torch.Tensor]]]

# Buffers some old checkpoints saved; we recompute them from the config.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class Checkpoint:
    """A model found on disk, read lazily.

    `tensors()` yields (Hugging Face parameter name, tensor) one at a time, in the checkpoint's own dtype and already
    in Hugging Face layout (Q/K rotate-half order). `tokenizer_files` maps file names of a Hugging Face folder
    (tokenizer.model, tokenizer.json, tokenizer_config.json, chat_template.jinja, ...) to their contents.
    `config` is None for a file that holds only a vocabulary. `tensor(name)` reads one tensor by its Hugging Face
    name (same dtype and layout as `tensors()` yields it); `tensor_names()` lists them without reading any.
    """

    source: Path
    format: str  # "hf" | "meta" | "gguf"
    config: LlamaConfig | None
    tensors: TensorStream | None
    tokenizer_files: dict[str, bytes] = field(default_factory=dict)
    stored_dtype: str = "unknown"
    tokenizer_kind: str | None = None  # "sentencepiece" | "bpe" | None
    index: TensorIndex | None = None

    @cached_property
    def _readers(self) -> dict[str, Callable[[], torch.Tensor]]:
        self.require_weights()
        if self.index is None:
            raise CheckpointError(f"{self.source}: this {self.format} checkpoint cannot be read one tensor at a time")
        return self.index()

    def tensor_names(self) -> list[str]:
        return [name for name in self._readers if not name.endswith(_IGNORED_SUFFIXES)]

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name` alone (Hugging Face name), read now; nothing else is kept in memory."""
        reader = self._readers.get(name)
        if reader is None:
            raise CheckpointError(
                f"{self.source}: missing tensor '{name}'; the weight files are incomplete or belong to another model"
            )
        return reader()

    def require_weights(self) -> None:
        if self.config is None or self.tensors is None:
            raise CheckpointError(
                f"{self.source} holds a tokenizer vocabulary but no model weights; "
                "use 'llamaport convert' to extract the tokenizer, or pass a checkpoint with weights"
            )


def expected_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {name: p.shape for name, p in model.state_dict(keep_vars=True).items()}


def materialize(checkpoint: Checkpoint, dtype: torch.dtype = torch.float32, model_class=LlamaForCausalLM):
    """Build the model on the meta device and assign each tensor as it streams in (peak ~ one copy of the weights).

    `model_class` is LlamaForCausalLM or LlamaForSequenceClassification (whose `score.weight` must be present).
    """
    checkpoint.require_weights()
    config = checkpoint.config
    with torch.device("meta"):
        model = model_class(config)
    shapes = expected_shapes(model)
    tied = config.tie_word_embeddings and "lm_head.weight" in shapes
    if tied:
        shapes.pop("lm_head.weight")
    state: dict[str, torch.Tensor] = {}
    for name, tensor in checkpoint.tensors():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and (tied or "lm_head.weight" not in shapes):
            continue  # tied (the embedding is the head), or a classifier built from a language model
        if name not in shapes:
            raise CheckpointError(f"{checkpoint.source}: unexpected tensor '{name}' for this Llama config")
        if tuple(tensor.shape) != tuple(shapes[name]):
            raise CheckpointError(
                f"{checkpoint.source}: tensor '{name}' has shape {tuple(tensor.shape)}, but config.json implies "
                f"{tuple(shapes[name])}; the config does not match the weights"
            )
        state[name] = tensor.to(dtype).contiguous()
    missing = sorted(set(shapes) - set(state))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(
            f"{checkpoint.source}: missing tensors {missing[:3]}{more}; the weight files are incomplete or belong to "
            "another model"
        )
    model.load_state_dict(state, strict=not tied, assign=True)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Non-persistent buffers are not in the state dict: rebuild them on the CPU.
    model.model.inv_freq = inverse_frequencies(config)[0]
    return model.requires_grad_(False).eval()
