"""Grouped-query attention over a static KV cache: the math every backend must reproduce.

`gqa_attention` is the reference for the GQA plugin op (plugins/ wraps it as a custom op and gives it ONNX
translations). It rotates q and k, writes k and v into the cache at each row's positions, and attends over the
cache with a causal mask built from those positions. No data-dependent control flow, so it traces.
"""

from __future__ import annotations

import torch

from .rope import apply_rotary


def cache_positions(past_lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Absolute positions (B, S) of the S new tokens of each row, which already holds past_lengths[b] tokens."""
    steps = torch.arange(seq_len, dtype=torch.int64, device=past_lengths.device)  # (S,)
    return past_lengths.to(torch.int64)[:, None] + steps  # (B, S)


def write_cache(cache: torch.Tensor, new: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """cache (B, H_kv, S_max, D) with new (B, H_kv, S, D) written at positions (B, S).

    Eager runs update the cache in place (no copy of the whole cache per step); under export the functional form is
    traced, and the exporter lowers it to an in-place op of the target (TensorScatter, GQA's shared buffer).
    """
    index = positions[:, None, :, None].expand_as(new)  # (B, H_kv, S, D)
    if torch.compiler.is_exporting() or new.requires_grad or cache.requires_grad:
        return cache.scatter(2, index, new)
    return cache.scatter_(2, index, new)


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
    """One attention layer with fused RoPE and cache write.

    q (B, H_q, S, D), k/v (B, H_kv, S, D) un-rotated projections; cos/sin (B, S, D); caches (B, H_kv, S_max, D);
    past_lengths (B,) tokens already in each row's cache. Returns (out (B, H_q, S, D), k_cache, v_cache).
    Softmax runs in float32 whatever the activation dtype.
    """
    batch, num_heads, seq_len, head_dim = q.shape
    num_kv_heads, max_seq = k_cache.shape[1], k_cache.shape[2]
    groups = num_heads // num_kv_heads
    positions = cache_positions(past_lengths, seq_len)  # (B, S)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    k_cache = write_cache(k_cache, k, positions)
    v_cache = write_cache(v_cache, v, positions)

    kv_len = max_seq
    if not torch.compiler.is_exporting():
        # Eager only: read just the filled part, so the cost tracks the current length and not S_max.
        kv_len = int(positions.max()) + 1
    keys, values = k_cache[:, :, :kv_len], v_cache[:, :, :kv_len]  # (B, H_kv, T, D)

    # Fold the query groups into the sequence axis instead of repeating K/V per query head.
    qg = q.reshape(batch, num_kv_heads, groups * seq_len, head_dim)  # (B, H_kv, G*S, D)
    scores = torch.matmul(qg.float(), keys.float().transpose(-1, -2)) * head_dim**-0.5  # (B, H_kv, G*S, T)
    key_pos = torch.arange(kv_len, device=q.device)  # (T,)
    visible = key_pos[None, None, :] <= positions[:, :, None]  # (B, S, T)
    visible = visible.repeat(1, groups, 1)[:, None]  # (B, 1, G*S, T)
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    out = torch.matmul(probs, values)  # (B, H_kv, G*S, D)
    return out.reshape(batch, num_heads, seq_len, head_dim), k_cache, v_cache
