"""ONNX operator schemas for the ops our exported graphs use that `onnx` itself does not define.

- `llamaport.GQAAttention` and `llamaport.RoPE` (version 1): our TensorRT plugins' nodes. Attributes
  become TensorRT PluginFields.
- `com.microsoft.GroupQueryAttention` (version 1): ONNX Runtime's contrib op, declared here only so onnxscript can
  build it and `onnx.checker`/shape inference accept the graph; ONNX Runtime brings its own kernel.
- `trt.TRT_Attention` and `trt.TRT_KVCacheUpdate` (version 1): TensorRT 11's own attention and KV-cache-update
  ONNX ops (the `--target trt-native` lowering), declared for the same reasons; TensorRT's ONNX parser maps them
  to IAttention / IKVCacheUpdateLayer, and plugins/reference_trt_native.py runs them in onnx.reference.
Registering is idempotent; `register()` runs when translations are imported (or when called directly).

`GQA_PLUGIN` / `ROPE_PLUGIN` are the one source of truth for our TensorRT plugins' names, tensors and fields: the
ONNX schemas below, the exporter's nodes (plugins/translations.py) and the `tensorrt.plugin` registrations
(plugins/tensorrt_plugins.py) are all built from them, and tests/test_tensorrt.py compares the three.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx.defs import OpSchema

PLUGIN_DOMAIN = "llamaport"
# TensorRT's ONNX parser looks a plugin up by (op type, `plugin_version` attribute, `plugin_namespace` attribute),
# version defaulting to "1" (onnx-tensorrt onnxOpImporters.cpp, FallbackPluginImporter), and every
# `tensorrt.plugin` registration has version "1" (TensorRT python/packaging/bindings_wheel/tensorrt/plugin/_lib.py,
# _TemplatePluginCreator.plugin_version): this must stay "1". Changes to a plugin's meaning get a new op name.
PLUGIN_VERSION = "1"
ORT_DOMAIN = "com.microsoft"
TRT_DOMAIN = "trt"  # TensorRT's custom ONNX ops (TRT_*), the domain NVIDIA's exporters write them in
_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
# Node attributes TensorRT's ONNX parser reads itself; they never reach the plugin as fields.
PARSER_ATTRIBUTES = ("plugin_version", "plugin_namespace")


@dataclass(frozen=True)
class PluginSpec:
    """One TensorRT plugin op: ONNX op type = plugin name, domain = namespace, int attributes = PluginFields.

    `aliases` maps an output to the input whose memory it updates in place (the KV caches).
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fields: tuple[str, ...]  # int attributes, in the order TensorRT receives them
    aliases: dict[str, str] = field(default_factory=dict)
    namespace: str = PLUGIN_DOMAIN
    version: str = PLUGIN_VERSION

    @property
    def plugin_id(self) -> str:
        """`namespace::name`, the id `tensorrt.plugin.register` takes."""
        return f"{self.namespace}::{self.name}"

    @property
    def node_attributes(self) -> tuple[str, ...]:
        """Every attribute the exporter writes on the node: the fields, then what the parser reads."""
        return (*self.fields, *PARSER_ATTRIBUTES)


GQA_PLUGIN = PluginSpec(
    "GQAAttention",
    inputs=("q", "k", "v", "cos", "sin", "k_cache", "v_cache", "past_lengths"),
    outputs=("out", "k_cache_out", "v_cache_out"),
    fields=("num_heads", "num_kv_heads", "head_dim"),
    aliases={"k_cache_out": "k_cache", "v_cache_out": "v_cache"},
)
ROPE_PLUGIN = PluginSpec("RoPE", inputs=("x", "cos", "sin"), outputs=("y",), fields=("num_heads",))
PLUGINS = (GQA_PLUGIN, ROPE_PLUGIN)


def _param(name: str, type_str: str, optional: bool = False) -> OpSchema.FormalParameter:
    option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
    return OpSchema.FormalParameter(name, type_str, param_option=option)


def _attr(name: str, kind: OpSchema.AttrType) -> OpSchema.Attribute:
    return OpSchema.Attribute(name, kind, "", required=False)


def _plugin_attributes(spec: PluginSpec) -> list[OpSchema.Attribute]:
    return [*(_attr(n, OpSchema.AttrType.INT) for n in spec.fields),
            *(_attr(n, OpSchema.AttrType.STRING) for n in PARSER_ATTRIBUTES)]


def gqa_plugin_schema() -> OpSchema:
    spec = GQA_PLUGIN
    types = {"past_lengths": "tensor(int64)"}
    return OpSchema(
        spec.name,
        spec.namespace,
        1,
        doc="Grouped-query attention with fused RoPE and in-place static KV-cache write (see plugins/README).",
        inputs=[_param(n, types.get(n, "T")) for n in spec.inputs],
        outputs=[_param(n, "T") for n in spec.outputs],
        type_constraints=[("T", _FLOATS, "activation dtype")],
        attributes=_plugin_attributes(spec),
    )


def rotary_plugin_schema() -> OpSchema:
    spec = ROPE_PLUGIN
    return OpSchema(
        spec.name,  # "RoPE", not "RotaryEmbedding": onnx.reference wants op names unique across domains
        spec.namespace,
        1,
        doc="Rotate-half RoPE on (B, S, H*D) with cos/sin (B, S, D/2).",
        inputs=[_param(n, "T") for n in spec.inputs],
        outputs=[_param(n, "T") for n in spec.outputs],
        type_constraints=[("T", _FLOATS, "activation dtype")],
        attributes=_plugin_attributes(spec),
    )


# TensorRT 11's custom ONNX ops, as documented in onnx/onnx-tensorrt docs/TRT_custom_ops.md (inputs by index,
# string attributes); TensorRT's parser finds importers by op type alone (onnx-tensorrt ModelImporter.cpp parseNode).
def trt_attention_schema() -> OpSchema:
    return OpSchema(
        "TRT_Attention",
        TRT_DOMAIN,
        1,
        doc="IAttention: softmax(Q K^T) V, no implicit scale or reshape; GQA when K/V have fewer heads than Q.",
        inputs=[_param("Q", "T"), _param("K", "T"), _param("V", "T"), _param("attn_mask", "M", optional=True),
                _param("query_lengths", "tensor(int32)", optional=True),
                _param("kv_lengths", "tensor(int32)", optional=True)],
        outputs=[_param("Y", "T")],
        type_constraints=[("T", _FLOATS, ""), ("M", ["tensor(bool)", *_FLOATS], "")],
        attributes=[_attr(n, OpSchema.AttrType.STRING) for n in ("query_form", "kv_form", "causal_kind",
                                                                 "TRT_normalization_op")]
        + [_attr(n, OpSchema.AttrType.INT) for n in ("TRT_decomposable", "nb_rank")],
    )


def trt_kv_cache_update_schema() -> OpSchema:
    return OpSchema(
        "TRT_KVCacheUpdate",
        TRT_DOMAIN,
        1,
        doc="IKVCacheUpdateLayer: out[b, :, write_indices[b] + s] = update[b, :, s]; out shares the cache's memory.",
        inputs=[_param("past_cache", "T"), _param("update", "T"),
                _param("write_indices", "tensor(int32)", optional=True),
                _param("update_lengths", "tensor(int32)", optional=True)],
        outputs=[_param("Y", "T")],
        type_constraints=[("T", _FLOATS, "")],
        attributes=[_attr("update_form", OpSchema.AttrType.STRING), _attr("mode", OpSchema.AttrType.STRING),
                    _attr("axis", OpSchema.AttrType.INT)],
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
    for schema in (gqa_plugin_schema(), rotary_plugin_schema(), ort_gqa_schema(), trt_attention_schema(),
                   trt_kv_cache_update_schema()):
        if not onnx.defs.has(schema.name, schema.domain):
            onnx.defs.register_schema(schema)
