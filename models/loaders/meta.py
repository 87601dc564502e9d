"""Meta's original release: params.json + consolidated.NN.pth (model-parallel shards) + tokenizer.model.

Shards are merged along the dimension each layer was split on, and Q/K are permuted from Meta's interleaved RoPE
layout to Hugging Face's rotate-half layout, as transformers' `convert_llama_weights_to_hf.py` does.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..config import LlamaConfig, RopeScaling
from llamaport.errors import CheckpointError
from .checkpoint import Checkpoint
from .permute import interleaved_to_half

# Meta name -> (HF name, dimension the model-parallel shards were split on; None = replicated).
_LAYER_MAP = {
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}


def is_meta_folder(path: Path) -> bool:
    return path.is_dir() and (path / "params.json").exists()


def intermediate_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def config_from_params(params: dict, vocab_size: int) -> LlamaConfig:
    dim, n_heads = params["dim"], params["n_heads"]
    rope_scaling = None
    if params.get("use_scaled_rope"):
        # Llama 3.1's constants, which params.json only switches on.
        rope_scaling = RopeScaling(
            "llama3", factor=params.get("rope_scaling_factor", 8.0), low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        )
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=dim,
        intermediate_size=intermediate_size(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier")),
        num_hidden_layers=params["n_layers"],
        num_attention_heads=n_heads,
        num_key_value_heads=params.get("n_kv_heads") or n_heads,
        rms_norm_eps=params.get("norm_eps", 1e-5),
        rope_theta=float(params.get("rope_theta", 10000.0)),
        rope_scaling=rope_scaling,
        max_position_embeddings=params.get("max_seq_len", 4096 if params.get("rope_theta") else 2048),
    )


def read_meta_folder(folder: Path) -> Checkpoint:
    try:
        params = json.loads((folder / "params.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{folder / 'params.json'}: not valid JSON ({e})") from None
    # Meta's params.json has no defaults to fall back on for the sizes: name the missing field.
    missing = [key for key in ("dim", "n_layers", "n_heads") if not isinstance(params.get(key), int)]
    if missing:
        raise CheckpointError(f"{folder / 'params.json'}: field '{missing[0]}' is missing or not an integer; "
                              "params.json from Meta's release sets dim, n_layers and n_heads")
    shard_paths = sorted(folder.glob("consolidated.*.pth"))
    if not shard_paths:
        raise CheckpointError(f"{folder}: params.json found but no consolidated.NN.pth weight shards")
    try:
        shards = [torch.load(str(p), map_location="cpu", mmap=True, weights_only=True) for p in shard_paths]
    except Exception as e:
        raise CheckpointError(f"{folder}: unreadable consolidated.*.pth shard ({e}); it is truncated or corrupt") from None
    emb_parts = [s["tok_embeddings.weight"] for s in shards]
    dim = params["dim"]
    # Llama 1/2 split the embedding along the hidden axis, Llama 3 along the vocabulary: tell by the shapes.
    emb_dim = 0 if emb_parts[0].shape[1] == dim else 1
    vocab_size = params.get("vocab_size", -1)
    if vocab_size is None or vocab_size <= 0:
        vocab_size = sum(p.shape[0] for p in emb_parts) if emb_dim == 0 else emb_parts[0].shape[0]
    config = config_from_params(params, vocab_size)

    def merged(name: str, split_dim: int | None) -> torch.Tensor:
        try:
            parts = [s[name] for s in shards]
        except KeyError:
            raise CheckpointError(f"{folder}: tensor '{name}' is missing from a consolidated shard") from None
        return parts[0] if split_dim is None or len(parts) == 1 else torch.cat(parts, dim=split_dim)

    def layer_tensor(i: int, meta_name: str, split_dim: int | None) -> torch.Tensor:
        w = merged(f"layers.{i}.{meta_name}", split_dim)
        if meta_name == "attention.wq.weight":
            w = interleaved_to_half(w, config.num_attention_heads)
        elif meta_name == "attention.wk.weight":
            w = interleaved_to_half(w, config.num_key_value_heads)
        return w

    def index() -> dict[str, Callable[[], torch.Tensor]]:
        readers = {"model.embed_tokens.weight": partial(merged, "tok_embeddings.weight", emb_dim)}
        for i in range(config.num_hidden_layers):
            for meta_name, (hf_name, split_dim) in _LAYER_MAP.items():
                readers[f"model.layers.{i}.{hf_name}"] = partial(layer_tensor, i, meta_name, split_dim)
        readers["model.norm.weight"] = partial(merged, "norm.weight", None)
        readers["lm_head.weight"] = partial(merged, "output.weight", 0)
        return readers

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for name, reader in index().items():
            yield name, reader()

    tokenizer_files = {}
    for candidate in (folder / "tokenizer.model", folder.parent / "tokenizer.model"):
        if candidate.exists():
            tokenizer_files["tokenizer.model"] = candidate.read_bytes()
            break
    dtype = str(emb_parts[0].dtype).removeprefix("torch.")
    kind = "sentencepiece" if tokenizer_files else None
    return Checkpoint(folder, "meta", config, tensors, tokenizer_files, dtype, kind, index=index)
