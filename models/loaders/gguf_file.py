"""GGUF files (`general.architecture = llama`) through the `gguf` package.

Tensors are dequantized one at a time to float32 (any type `gguf.quants.dequantize` supports: F32/F16/BF16, Q8_0,
Q4_0/Q4_1, K-quants), Q/K rows are moved back from llama.cpp's interleaved order, and metadata becomes a
`LlamaConfig`. A GGUF with no tensors (a vocabulary file) yields only tokenizer files.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..config import LlamaConfig, RopeScaling
from llamaport.errors import CheckpointError, ConfigError
from .checkpoint import Checkpoint
from .gguf_tokenizer import tokenizer_files_from_gguf
from .permute import interleaved_to_half

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Tensors llama.cpp adds that have no Hugging Face counterpart (Llama 3.1's rope factors come from the config).
_SKIPPED = ("rope_freqs.weight",)


def open_gguf(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/struct errors/IndexError on damaged files
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None


def metadata(reader) -> dict[str, Any]:
    """Scalar and string metadata as plain Python values (token arrays are left to the tokenizer code)."""
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("tokenizer.ggml.") and name.rsplit(".", 1)[-1] in ("tokens", "scores", "token_type", "merges"):
            continue
        try:
            out[name] = field.contents()
        except Exception:  # noqa: BLE001 - exotic field types we never read
            continue
    return out


def _f32(value: float) -> float:
    """A float stored as float32 in GGUF, written back with its shortest decimal spelling (9.99e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def config_from_gguf(meta: dict[str, Any], tensor_names: set[str], vocab_size: int) -> LlamaConfig:
    def get(key, default=None):
        return meta.get(f"llama.{key}", default)

    for key in ("embedding_length", "attention.head_count", "block_count", "feed_forward_length"):
        if get(key) is None:  # no default exists for a size: name the GGUF key, not the config field it fills
            raise ConfigError(f"llama.{key}", "missing from the GGUF metadata; the file is incomplete or was not "
                                              "written by a llama.cpp Llama converter")
    heads = get("attention.head_count")
    hidden = get("embedding_length")
    head_dim = get("attention.key_length") or get("rope.dimension_count") or hidden // heads
    rope_scaling = None
    scaling_type = get("rope.scaling.type")
    if scaling_type and scaling_type != "none":
        rope_scaling = RopeScaling(
            scaling_type,
            factor=float(get("rope.scaling.factor", 1.0)),
            original_max_position_embeddings=get("rope.scaling.original_context_length"),
        )
    return LlamaConfig(
        vocab_size=int(get("vocab_size") or vocab_size),
        hidden_size=hidden,
        intermediate_size=get("feed_forward_length"),
        num_hidden_layers=get("block_count"),
        num_attention_heads=heads,
        num_key_value_heads=get("attention.head_count_kv") or heads,
        head_dim=head_dim,
        max_position_embeddings=get("context_length", 2048),
        rms_norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=_f32(get("rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    if gguf_name.startswith("blk."):
        _, index, rest = gguf_name.split(".", 2)
        if rest in _BLOCK_NAMES:
            return f"model.layers.{index}.{_BLOCK_NAMES[rest]}"
    return None


def dequantize(tensor) -> np.ndarray:
    """A GGUF tensor as float32 (rows, cols) in PyTorch's (out, in) order."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists the fastest-moving dimension first
    if tensor.tensor_type == GGMLQuantizationType.F32:
        data = np.array(tensor.data, dtype=np.float32)  # a copy: the mapped file is read-only
    else:
        data = gguf_dequantize(tensor.data, tensor.tensor_type)
    return data.reshape(shape)


def read_gguf(path: Path) -> Checkpoint:
    reader = open_gguf(path)
    meta = metadata(reader)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(
            f"{path}: GGUF architecture is {arch!r}, not 'llama'; only Llama-family GGUF files are supported"
        )
    tokenizer_files, tokenizer_kind = tokenizer_files_from_gguf(reader, meta)
    if not reader.tensors:
        return Checkpoint(path, "gguf", None, None, tokenizer_files, "none", tokenizer_kind)

    tensors_by_name = {t.name: t for t in reader.tensors}
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else 0
    config = config_from_gguf(meta, set(tensors_by_name), n_tokens)
    if "chat_template" not in config.extra and meta.get("tokenizer.chat_template"):
        config.extra["chat_template"] = meta["tokenizer.chat_template"]

    def read(name: str) -> torch.Tensor:
        w = dequantize(tensors_by_name[name])
        if name.endswith("attn_q.weight"):
            w = interleaved_to_half(w, config.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            w = interleaved_to_half(w, config.num_key_value_heads)
        # torch-owned memory: a per-tensor copy, freed as soon as the exporter has written it
        return torch.tensor(w)

    def index() -> dict[str, Callable[[], torch.Tensor]]:
        readers = {}
        for name in tensors_by_name:
            if name in _SKIPPED:
                continue
            target = hf_name(name)
            if target is None:
                raise CheckpointError(f"{path}: unknown GGUF tensor '{name}' for a llama model")
            readers[target] = partial(read, name)
        return readers

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for target, reader in index().items():
            yield target, reader()

    types = sorted({t.tensor_type.name for t in reader.tensors})
    return Checkpoint(path, "gguf", config, tensors, tokenizer_files, "+".join(types), tokenizer_kind, index=index)
