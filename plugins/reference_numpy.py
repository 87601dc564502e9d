"""NumPy reference kernels for our custom ONNX nodes, runnable in `onnx.reference.ReferenceEvaluator`.

This is how graphs for the `trt` target are verified on machines without TensorRT: the evaluator runs every
standard node itself and calls these for the `llamaport` domain. Written independently of the torch reference,
so agreement between the two is a real check.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from .schemas import PLUGIN_DOMAIN


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x (B, H, S, D) rotate-half RoPE with cos/sin (B, S, D/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None], sin[:, None]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def gqa_attention(q, k, v, cos, sin, k_cache, v_cache, past_lengths, num_heads, num_kv_heads, head_dim):
    batch, seq_len, _ = q.shape
    to_heads = lambda x, n: x.reshape(batch, seq_len, n, head_dim).transpose(0, 2, 1, 3)  # noqa: E731
    qh = rotate(to_heads(q, num_heads), cos, sin)
    kh = rotate(to_heads(k, num_kv_heads), cos, sin)
    vh = to_heads(v, num_kv_heads)
    k_cache, v_cache = k_cache.copy(), v_cache.copy()
    out = np.zeros_like(qh)
    groups = num_heads // num_kv_heads
    for b in range(batch):
        start = int(past_lengths[b])
        k_cache[b, :, start : start + seq_len] = kh[b]
        v_cache[b, :, start : start + seq_len] = vh[b]
        for i in range(seq_len):
            length = start + i + 1  # causal: this query sees the row's first `length` entries
            for head in range(num_heads):
                keys = k_cache[b, head // groups, :length].astype(np.float32)
                scores = keys @ qh[b, head, i].astype(np.float32) / np.sqrt(head_dim)
                p = np.exp(scores - scores.max())
                p /= p.sum()
                out[b, head, i] = p @ v_cache[b, head // groups, :length].astype(np.float32)
    out = out.transpose(0, 2, 1, 3).reshape(batch, seq_len, num_heads * head_dim)
    return out.astype(q.dtype), k_cache, v_cache


class GQAAttention(OpRun):
    op_domain = PLUGIN_DOMAIN

    def _run(self, q, k, v, cos, sin, k_cache, v_cache, past_lengths, num_heads=None, num_kv_heads=None,
             head_dim=None, plugin_version=None, plugin_namespace=None):
        return gqa_attention(q, k, v, cos, sin, k_cache, v_cache, past_lengths, num_heads, num_kv_heads, head_dim)


class RoPE(OpRun):
    op_domain = PLUGIN_DOMAIN

    def _run(self, x, cos, sin, num_heads=None, plugin_version=None, plugin_namespace=None):
        batch, seq_len, width = x.shape
        heads = x.reshape(batch, seq_len, num_heads, width // num_heads).transpose(0, 2, 1, 3)
        return (rotate(heads, cos, sin).transpose(0, 2, 1, 3).reshape(x.shape).astype(x.dtype),)


REFERENCE_OPS = [GQAAttention, RoPE]
