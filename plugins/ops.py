"""The plugin ops (GQA attention with fused RoPE and cache write; standalone RoPE) as `torch.library` custom ops: opaque to tracing, so each target can give them its own lowering.

Eager runs call the reference implementation (`llamaport.models.attention.gqa_attention`); the fake (meta)
implementation gives torch.export the output shapes.
"""

from __future__ import annotations

import torch

from llamaport.models.attention import gqa_attention as gqa_reference
from llamaport.models.rope import apply_rotary


@torch.library.custom_op("llamaport::gqa_attention", mutates_args=())
def gqa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    past_lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GQA with fused RoPE and cache write; shapes as in `llamaport.models.attention.gqa_attention`."""
    # Custom ops may not return their inputs, so the reference runs functionally here.
    return gqa_reference(q, k, v, cos, sin, k_cache, v_cache, past_lengths, inplace=False)


@gqa_attention.register_fake
def _gqa_attention_fake(q, k, v, cos, sin, k_cache, v_cache, past_lengths):
    return torch.empty_like(q), torch.empty_like(k_cache), torch.empty_like(v_cache)


def use_plugin_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Route every attention layer of `model` through the plugin op (same numbers, traceable as one node)."""
    for module in model.modules():
        if hasattr(module, "attention_fn"):
            module.attention_fn = gqa_attention
    return model


@torch.library.custom_op("llamaport::rotary_embedding", mutates_args=())
def rotary_embedding(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rotate-half RoPE on x (B, S, H*D) with cos/sin (B, S, D/2); for graphs that keep RoPE out of attention."""
    batch, seq_len, width = x.shape
    heads = x.view(batch, seq_len, num_heads, width // num_heads).transpose(1, 2)  # (B, H, S, D)
    return apply_rotary(heads, cos, sin).transpose(1, 2).reshape(batch, seq_len, width)


@rotary_embedding.register_fake
def _rotary_embedding_fake(x, cos, sin, num_heads):
    return torch.empty_like(x)
