"""NumPy reference kernels for TensorRT 11's `trt.TRT_Attention` and `trt.TRT_KVCacheUpdate` ONNX ops, so
`onnx.reference.ReferenceEvaluator` runs `--target trt-native` graphs on machines without TensorRT.

Semantics from TensorRT's own documentation (onnx/onnx-tensorrt docs/TRT_custom_ops.md; include/NvInfer.h
IAttention, CausalMaskKind, IKVCacheUpdateLayer). Only what the lowering emits is implemented (padded [B, H, N, D]
forms, softmax, linear cache mode); anything else raises, so a graph using more cannot pass verification by
accident. Written independently of the torch reference and of plugins/reference_numpy.py.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from .schemas import TRT_DOMAIN

PADDED = "padded_bhnd"


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise NotImplementedError(f"reference TRT op: {what}")


def kv_cache_update(past_cache: np.ndarray, update: np.ndarray, write_indices: np.ndarray | None) -> np.ndarray:
    """out[b, :, write_indices[b] + s] = update[b, :, s] (IKVCacheUpdateLayer, kLINEAR); caches (B, H, N_max, D)."""
    batch, _, seq_len, _ = update.shape
    starts = np.zeros(batch, np.int64) if write_indices is None else np.asarray(write_indices, np.int64)
    out = past_cache.copy()
    for b in range(batch):
        start = int(starts[b])
        # TensorRT assumes in-bounds writes ("Assuming no out-of-bounds writes occur"); here they are an error.
        _require(0 <= start and start + seq_len <= past_cache.shape[2], f"row {b} writes past the cache's end")
        out[b, :, start : start + seq_len] = update[b]
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, kv_lengths: np.ndarray | None,
              causal_kind: str) -> np.ndarray:
    """IAttention on padded forms: softmax(Q K^T) V with no implicit scale, GQA by head groups, float32 math.

    q (B, H, S_q, D), k/v (B, H_kv, S_kv, D). Row b sees keys j < kv_lengths[b] (all S_kv without lengths);
    lower-right causal lets query i see j <= i + (len_b - S_q), upper-left j <= i.
    """
    batch, num_heads, s_q, _ = q.shape
    num_kv_heads, s_kv = k.shape[1], k.shape[2]
    _require(num_heads % num_kv_heads == 0, f"{num_heads} query heads over {num_kv_heads} key/value heads")
    groups = num_heads // num_kv_heads
    lengths = np.full(batch, s_kv, np.int64) if kv_lengths is None else np.asarray(kv_lengths, np.int64)
    keys = np.repeat(k.astype(np.float32), groups, axis=1)  # (B, H, S_kv, D)
    vals = np.repeat(v.astype(np.float32), groups, axis=1)
    scores = q.astype(np.float32) @ keys.transpose(0, 1, 3, 2)  # (B, H, S_q, S_kv)
    i = np.arange(s_q)[:, None]
    j = np.arange(s_kv)[None, :]
    visible = j[None] < lengths[:, None, None]  # (B, 1->S_q, S_kv)
    if causal_kind == "lower_right":
        visible = visible & (j[None] <= i[None] + (lengths - s_q)[:, None, None])
    elif causal_kind == "upper_left":
        visible = visible & (j <= i)[None]
    else:
        _require(causal_kind == "none", f"causal_kind {causal_kind!r}")
    scores = np.where(visible[:, None], scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    return (p @ vals).astype(q.dtype)  # (B, H, S_q, D)


class TRT_KVCacheUpdate(OpRun):  # noqa: N801  (the class name is the op type)
    op_domain = TRT_DOMAIN

    def _run(self, past_cache, update, write_indices=None, update_lengths=None, update_form=None, mode=None,
             axis=None):
        _require((update_form or PADDED) == PADDED, f"update_form {update_form!r}")
        _require((mode or "linear") == "linear", f"mode {mode!r}")
        _require(axis in (None, -2, 2), f"axis {axis}")
        _require(update_lengths is None, "update_lengths (packed updates)")
        return (kv_cache_update(past_cache, update, write_indices),)


class TRT_Attention(OpRun):  # noqa: N801
    op_domain = TRT_DOMAIN

    def _run(self, Q, K, V, attn_mask=None, query_lengths=None, kv_lengths=None, query_form=None, kv_form=None,  # noqa: N803
             causal_kind=None, TRT_decomposable=None, TRT_normalization_op=None, nb_rank=None):  # noqa: N803
        _require((query_form or PADDED) == PADDED and (kv_form or PADDED) == PADDED, "packed forms")
        _require(attn_mask is None and query_lengths is None, "attn_mask / query_lengths")
        _require((TRT_normalization_op or "softmax") == "softmax", f"normalization {TRT_normalization_op!r}")
        _require((nb_rank or 1) == 1, "multi-device attention")
        return (attention(Q, K, V, kv_lengths, causal_kind or "none"),)


REFERENCE_OPS = [TRT_Attention, TRT_KVCacheUpdate]
