"""Grouped-query attention over a static KV cache: the math every backend must reproduce.

`gqa_attention` is the reference for the GQA plugin op (plugins/ wraps it as a custom op and gives it ONNX
translations). It rotates q and k, writes k and v into the cache at each row's positions, and attends over the
filled part of the cache with a causal mask built from those positions. Its interface is the one fused kernels
take (ORT GroupQueryAttention, TensorRT attention plugins): q/k/v as (B, S, H*D), cos/sin as (B, S, D/2).
"""

from __future__ import annotations

import torch

from .rope import apply_rotary


def cache_positions(past_lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Absolute positions (B, S) of the S new tokens of each row, which already holds past_lengths[b] tokens."""
    steps = torch.arange(seq_len, dtype=torch.int64, device=past_lengths.device)  # (S,)
    return past_lengths.to(torch.int64)[:, None] + steps  # (B, S)


def write_cache(cache: torch.Tensor, new: torch.Tensor, positions: torch.Tensor, inplace: bool) -> torch.Tensor:
    """cache (B, H_kv, S_max, D) with new (B, H_kv, S, D) written at positions (B, S)."""
    index = positions[:, None, :, None].expand_as(new)  # (B, H_kv, S, D)
    return cache.scatter_(2, index, new) if inplace else cache.scatter(2, index, new)


def gqa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    past_lengths: torch.Tensor,
    inplace: bool | None = None,
    kv_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One attention layer with fused RoPE and cache write.

    q (B, S, H_q*D), k/v (B, S, H_kv*D) un-rotated projections; cos/sin (B, S, D/2); caches (B, H_kv, S_max, D);
    past_lengths (B,) tokens already in each row's cache. Returns (out (B, S, H_q*D), k_cache, v_cache).

    inplace=None updates the caches in place in eager inference (no copy of the whole cache per step) and
    functionally when exporting or differentiating. kv_len: how much of the cache to read (the longest filled
    row); the model computes it once per forward, so a GPU run does not sync once per layer to find it.
    Softmax runs in float32 whatever the activation dtype.
    """
    batch, seq_len, _ = q.shape
    num_kv_heads, max_seq, head_dim = k_cache.shape[1:]
    num_heads = q.shape[-1] // head_dim
    groups = num_heads // num_kv_heads
    exporting = torch.compiler.is_exporting()
    if inplace is None:
        inplace = not (exporting or k.requires_grad or k_cache.requires_grad)

    q = q.view(batch, seq_len, num_heads, head_dim).transpose(1, 2)  # (B, H_q, S, D)
    k = k.view(batch, seq_len, num_kv_heads, head_dim).transpose(1, 2)  # (B, H_kv, S, D)
    v = v.view(batch, seq_len, num_kv_heads, head_dim).transpose(1, 2)  # (B, H_kv, S, D)
    positions = cache_positions(past_lengths, seq_len)  # (B, S)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    k_cache = write_cache(k_cache, k, positions, inplace)
    v_cache = write_cache(v_cache, v, positions, inplace)

    # Read only the filled part, so the cost tracks the current length and not S_max.
    if exporting:
        kv_len = max_seq
    elif kv_len is None:
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
    out = out.view(batch, num_heads, seq_len, head_dim).transpose(1, 2)  # (B, S, H_q, D)
    return out.reshape(batch, seq_len, num_heads * head_dim), k_cache, v_cache
