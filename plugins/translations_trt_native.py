"""`--target trt-native`: the GQA plugin op lowered to TensorRT 11's own LLM ops instead of our plugin.

Per layer, with q/k/v (B, S, H*D), cos/sin (B, S, D/2), caches (B, H_kv, S_max, D), past_lengths (B,):

    q4, k4  = RotaryEmbedding-23 on (B, H, S, D) / (B, H_kv, S, D)            -> IRotaryEmbeddingLayer (>= 10.15)
    caches  = trt.TRT_KVCacheUpdate(cache, k4 | v4, write_indices=past_lengths) -> IKVCacheUpdateLayer (>= 10.15)
    y       = trt.TRT_Attention(q4 / sqrt(D), k_cache, v_cache, kv_lengths=past_lengths + S,
                                causal_kind="lower_right")                     -> IAttention (TensorRT 11)

The ops and their attributes are TensorRT's (onnx/onnx-tensorrt docs/TRT_custom_ops.md; TensorRT
include/NvInfer.h IAttention, CausalMaskKind, IKVCacheUpdateLayer). Why each choice:
- Lower-right causal with per-row key lengths puts each row's S queries at the end of its own filled length
  (query i sees keys j <= i + kv_lengths[b] - S = i + past_lengths[b]), which is how every other target
  masks; keys past kv_lengths[b] (the cache's unfilled tail) are never read.
- TRT_Attention "does not use ... scale to ... scale Q/K/V" (TRT_custom_ops.md) and IAttention's BMM1 ->
  softmax has no scale of its own (NvInfer.h), so Q is scaled by 1/sqrt(D) here.
- IKVCacheUpdateLayer's output "must share the same device memory address" as its cache input (NvInfer.h):
  the runtime binds present.{i}.* to the past.{i}.* buffers, as it does for every target.
- Lengths and write indices are int32, as both ops take them.
Verified without TensorRT: plugins/reference_trt_native.py runs both ops in onnx.reference, and export
verification compares the graph with eager logits exactly as for `--target trt`.
"""

from __future__ import annotations

import math

from onnxscript import values

from .schemas import TRT_DOMAIN, register
from .translations import ONNX_OPSET, Heads, _PerGraph, _seq_len, heads_first

register()
op = values.Opset("", ONNX_OPSET)
trt_ops = values.Opset(TRT_DOMAIN, 1)
_INT32 = 6  # onnx.TensorProto.INT32
PADDED = "padded_bhnd"  # (B, H, N, D) tensors: both ops' default form, spelled out so the graph says it


def tensorrt_native(heads: Heads):
    h, kv, d = heads.num_heads, heads.num_kv_heads, heads.head_dim

    def to_heads(x, n):
        return heads_first(x, n, d)

    shared = _PerGraph()

    def lengths(q, past_lengths):
        write = op.Cast(past_lengths, to=_INT32)  # (B,) first cache slot each row writes
        total = op.Cast(op.Add(past_lengths, _seq_len(q)), to=_INT32)  # (B,) filled length after this step
        return write, total

    def gqa_attention(q, k, v, cos, sin, k_cache, v_cache, past_lengths):
        q4 = op.RotaryEmbedding(to_heads(q, h), cos, sin)  # (B, H, S, D)
        k4 = op.RotaryEmbedding(to_heads(k, kv), cos, sin)  # (B, H_kv, S, D)
        write, total = shared.get((id(past_lengths), id(cos)), lambda: lengths(q, past_lengths))
        k_cache = trt_ops.TRT_KVCacheUpdate(k_cache, k4, write, update_form=PADDED, mode="linear", axis=-2)
        v_cache = trt_ops.TRT_KVCacheUpdate(v_cache, to_heads(v, kv), write, update_form=PADDED, mode="linear",
                                            axis=-2)
        scaled = op.Mul(q4, op.CastLike(op.Constant(value_float=1.0 / math.sqrt(d)), q4))
        y = trt_ops.TRT_Attention(scaled, k_cache, v_cache, None, None, total, query_form=PADDED, kv_form=PADDED,
                                  causal_kind="lower_right")  # (B, H, S, D)
        out = op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, h * d]))
        return out, k_cache, v_cache

    return gqa_attention
