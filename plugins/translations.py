"""ONNX lowerings of the GQA plugin op, one per export target, written with onnxscript.

All three take the op's inputs (q/k/v (B, S, H*D), cos/sin (B, S, D/2), caches (B, H_kv, S_max, D),
past_lengths (B,)) and return (out (B, S, H_q*D), k_cache, v_cache):

- `onnx`: standard ops only, opset 24: RotaryEmbedding, TensorScatter (in place when the runtime binds the
  present cache to the past buffer), then Attention over the cache sliced to the longest filled row, with
  `nonpad_kv_seqlen` masking each row's unfilled tail, so the cost tracks the filled length, not S_max.
- `ort`: ONNX Runtime's fused `com.microsoft.GroupQueryAttention` with a shared past/present buffer (in-place
  cache update; attention reads only `seqlens_k + 1` keys per row). Given a rotary table it also applies RoPE
  itself (`do_rotary`, positions from `seqlens_k`), which saves two RotaryEmbedding nodes per layer; without one
  (dynamic NTK, whose frequencies change with length, or head_dim not a multiple of 16) RotaryEmbedding-23 runs
  first. exporter/fusions.pack_qkv then hands it the fused qkv projection unsplit.
- `trt`: one `llamaport.GQAAttention` node for our TensorRT plugin.
- `trt-native`: TensorRT 11's own ops (plugins/translations_trt_native.py): RotaryEmbedding-23,
  `trt.TRT_KVCacheUpdate` and `trt.TRT_Attention` (lower-right causal, per-row key lengths).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx.numpy_helper import from_array
from onnxscript import values

from .schemas import GQA_PLUGIN, ORT_DOMAIN, PLUGIN_DOMAIN, ROPE_PLUGIN, PluginSpec, register

register()
TARGETS = ("onnx", "ort", "trt", "trt-native")
# Targets whose graphs verify in onnx.reference (their custom ops have NumPy kernels) instead of ONNX Runtime.
REFERENCE_TARGETS = ("trt", "trt-native")
ONNX_OPSET = 24
op = values.Opset("", ONNX_OPSET)
ms = values.Opset(ORT_DOMAIN, 1)
lp = values.Opset(PLUGIN_DOMAIN, 1)
_INT32, _FLOAT = 6, 1  # onnx.TensorProto data types


@dataclass(frozen=True)
class Heads:
    num_heads: int
    num_kv_heads: int
    head_dim: int


def _seq_len(x):
    return op.Shape(x, start=1, end=2)  # (1,) int64


class _PerGraph:
    """Values every layer derives the same way from past_lengths (filled lengths, GQA's seqlens_k), built once
    by the first layer and reused by the others: ONNX Runtime does not merge the 30 identical copies itself."""

    def __init__(self):
        self.values: dict[tuple, object] = {}

    def get(self, key: tuple, build):
        if key not in self.values:
            self.values[key] = build()
        return self.values[key]


def heads_first(x, num_heads: int, head_dim: int):
    """(B, S, H*D) -> (B, H, S, D): the layout ONNX's Attention/RotaryEmbedding and TensorRT's ops take."""
    return op.Transpose(op.Reshape(x, op.Constant(value_ints=[0, 0, num_heads, head_dim])), perm=[0, 2, 1, 3])


def onnx_standard(heads: Heads):
    h, kv, d = heads.num_heads, heads.num_kv_heads, heads.head_dim

    def to_heads(x, n):
        return heads_first(x, n, d)

    shared = _PerGraph()

    def lengths(q, past_lengths):
        total = op.Add(past_lengths, _seq_len(q))  # (B,) filled length after this step
        return total, op.ReduceMax(total, keepdims=1), op.Constant(value_ints=[0]), op.Constant(value_ints=[2])

    def gqa_attention(q, k, v, cos, sin, k_cache, v_cache, past_lengths):
        q4 = op.RotaryEmbedding(to_heads(q, h), cos, sin)
        k4 = op.RotaryEmbedding(to_heads(k, kv), cos, sin)
        k_cache = op.TensorScatter(k_cache, k4, past_lengths, axis=2)
        v_cache = op.TensorScatter(v_cache, to_heads(v, kv), past_lengths, axis=2)
        total, filled, zero, axis = shared.get((id(past_lengths), id(cos)), lambda: lengths(q, past_lengths))
        keys = op.Slice(k_cache, zero, filled, axis)  # (B, H_kv, T, D)
        vals = op.Slice(v_cache, zero, filled, axis)
        # is_causal with nonpad_kv_seqlen aligns each row's queries to the end of its filled length.
        # The builder gives every optional output a name; the exporter prunes the unused ones afterwards.
        y, *_unused = op.Attention(q4, keys, vals, None, None, None, total, is_causal=1, softmax_precision=_FLOAT)
        out = op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, h * d]))
        return out, k_cache, v_cache

    return gqa_attention


def onnxruntime_contrib(heads: Heads, rotary_table=None):
    h, kv = heads.num_heads, heads.num_kv_heads
    # GroupQueryAttention's own rotary needs head_dim % 16 == 0 (ONNX Runtime's check).
    fused_rotary = rotary_table is not None and heads.head_dim % 16 == 0

    shared = _PerGraph()

    def lengths(q, past_lengths):
        total = op.Add(past_lengths, _seq_len(q))  # (B,)
        seqlens_k = op.Cast(op.Sub(total, op.Constant(value_ints=[1])), to=_INT32)
        return seqlens_k, op.Cast(op.ReduceMax(total, keepdims=0), to=_INT32)  # (B,), () int32

    def gqa_attention(q, k, v, cos, sin, k_cache, v_cache, past_lengths):
        # Keyed on the graph's own tensors, so a second export never reuses the first one's values.
        seqlens_k, total_len = shared.get((id(past_lengths), id(cos)), lambda: lengths(q, past_lengths))
        if fused_rotary:
            cos_cache, sin_cache = shared.get(
                (id(past_lengths), "rotary_table"), lambda: tuple(op.Constant(value=from_array(t)) for t in rotary_table))
            return ms.GroupQueryAttention(q, k, v, k_cache, v_cache, seqlens_k, total_len, cos_cache, sin_cache,
                                          num_heads=h, kv_num_heads=kv, do_rotary=1)
        q = op.RotaryEmbedding(q, cos, sin, num_heads=h)
        k = op.RotaryEmbedding(k, cos, sin, num_heads=kv)
        return ms.GroupQueryAttention(q, k, v, k_cache, v_cache, seqlens_k, total_len, num_heads=h, kv_num_heads=kv)

    return gqa_attention


def plugin_attributes(spec: PluginSpec, **fields: int) -> dict:
    """The node attributes of a `spec` plugin: exactly its fields, plus what TensorRT's parser reads."""
    if set(fields) != set(spec.fields):
        raise ValueError(f"{spec.plugin_id} takes fields {spec.fields}, got {tuple(fields)}")
    return {**{name: fields[name] for name in spec.fields}, "plugin_version": spec.version,
            "plugin_namespace": spec.namespace}


def tensorrt_plugin(heads: Heads):
    attributes = plugin_attributes(GQA_PLUGIN, num_heads=heads.num_heads, num_kv_heads=heads.num_kv_heads,
                                   head_dim=heads.head_dim)

    def gqa_attention(q, k, v, cos, sin, k_cache, v_cache, past_lengths):
        return lp.GQAAttention(q, k, v, cos, sin, k_cache, v_cache, past_lengths, **attributes)

    return gqa_attention


def rotary_standard(x, cos, sin, num_heads: int):
    """`onnx` and `ort`: ONNX's own RotaryEmbedding-23 on the (B, S, H*D) layout."""
    return op.RotaryEmbedding(x, cos, sin, num_heads=num_heads)


def rotary_plugin(x, cos, sin, num_heads: int):
    return lp.RoPE(x, cos, sin, **plugin_attributes(ROPE_PLUGIN, num_heads=num_heads))


def translation_table(target: str, heads: Heads, rotary_table=None) -> dict:
    """The `custom_translation_table` for torch.onnx.export for one target.

    `rotary_table`: (cos, sin) numpy arrays (S_max, D/2) in the activation dtype, cos/sin of every cache position,
    or None when the frequencies are not static (dynamic NTK). Only the `ort` lowering uses it.
    """
    import torch

    from . import ops  # noqa: F401  (registers torch.ops.llamaport.*)

    if target == "ort":
        gqa = onnxruntime_contrib(heads, rotary_table)
    elif target == "trt-native":
        from .translations_trt_native import tensorrt_native

        gqa = tensorrt_native(heads)
    else:
        gqa = {"onnx": onnx_standard, "trt": tensorrt_plugin}[target](heads)
    rotary = rotary_plugin if target == "trt" else rotary_standard
    return {torch.ops.llamaport.gqa_attention.default: gqa, torch.ops.llamaport.rotary_embedding.default: rotary}
