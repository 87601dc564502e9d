"""ONNX operator schemas for the ops our exported graphs use that `onnx` itself does not define.

- `llamaport.GQAAttention` and `llamaport.RoPE` (version 1): our TensorRT plugins' nodes. Attributes
  become TensorRT PluginFields.
- `com.microsoft.GroupQueryAttention` (version 1): ONNX Runtime's contrib op, declared here only so onnxscript can
  build it and `onnx.checker`/shape inference accept the graph; ONNX Runtime brings its own kernel.
Registering is idempotent; `register()` is called on import of `llamaport.plugins`.
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

PLUGIN_DOMAIN = "llamaport"
PLUGIN_VERSION = "1"
ORT_DOMAIN = "com.microsoft"
_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def _param(name: str, type_str: str, optional: bool = False) -> OpSchema.FormalParameter:
    option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
    return OpSchema.FormalParameter(name, type_str, param_option=option)


def _attr(name: str, kind: OpSchema.AttrType) -> OpSchema.Attribute:
    return OpSchema.Attribute(name, kind, "", required=False)


def gqa_plugin_schema() -> OpSchema:
    inputs = [_param(n, "T") for n in ("q", "k", "v", "cos", "sin", "k_cache", "v_cache")]
    return OpSchema(
        "GQAAttention",
        PLUGIN_DOMAIN,
        1,
        doc="Grouped-query attention with fused RoPE and in-place static KV-cache write (see plugins/README).",
        inputs=[*inputs, _param("past_lengths", "tensor(int64)")],
        outputs=[_param("out", "T"), _param("k_cache_out", "T"), _param("v_cache_out", "T")],
        type_constraints=[("T", _FLOATS, "activation dtype")],
        attributes=[
            _attr("num_heads", OpSchema.AttrType.INT),
            _attr("num_kv_heads", OpSchema.AttrType.INT),
            _attr("head_dim", OpSchema.AttrType.INT),
            _attr("plugin_version", OpSchema.AttrType.STRING),
            _attr("plugin_namespace", OpSchema.AttrType.STRING),
        ],
    )


def rotary_plugin_schema() -> OpSchema:
    return OpSchema(
        "RoPE",  # not "RotaryEmbedding": onnx.reference wants op names unique across domains
        PLUGIN_DOMAIN,
        1,
        doc="Rotate-half RoPE on (B, S, H*D) with cos/sin (B, S, D/2).",
        inputs=[_param("x", "T"), _param("cos", "T"), _param("sin", "T")],
        outputs=[_param("y", "T")],
        type_constraints=[("T", _FLOATS, "activation dtype")],
        attributes=[
            _attr("num_heads", OpSchema.AttrType.INT),
            _attr("plugin_version", OpSchema.AttrType.STRING),
            _attr("plugin_namespace", OpSchema.AttrType.STRING),
        ],
    )


def ort_gqa_schema() -> OpSchema:
    # key/value are empty when query is packed (B, S, (H + 2 H_kv) * D); see exporter/fusions.pack_qkv.
    names = ("query", "key", "value", "past_key", "past_value")
    return OpSchema(
        "GroupQueryAttention",
        ORT_DOMAIN,
        1,
        inputs=[
            *[_param(n, "T") for n in names],
            _param("seqlens_k", "tensor(int32)"),
            _param("total_sequence_length", "tensor(int32)"),
            # (S_max, D/2) tables that do_rotary=1 indexes by each token's position
            _param("cos_cache", "T", optional=True),
            _param("sin_cache", "T", optional=True),
        ],
        outputs=[_param("output", "T"), _param("present_key", "T"), _param("present_value", "T")],
        type_constraints=[("T", _FLOATS, "")],
        attributes=[
            _attr("num_heads", OpSchema.AttrType.INT),
            _attr("kv_num_heads", OpSchema.AttrType.INT),
            _attr("scale", OpSchema.AttrType.FLOAT),
            _attr("do_rotary", OpSchema.AttrType.INT),
        ],
    )


def register() -> None:
    for schema in (gqa_plugin_schema(), rotary_plugin_schema(), ort_gqa_schema()):
        if not onnx.defs.has(schema.name, schema.domain):
            onnx.defs.register_schema(schema)
