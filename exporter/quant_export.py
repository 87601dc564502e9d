"""Int4 in the streamed export: the pass between `graph.trace_graph` and `graph.write_graph`.

`quantize_traced(traced, spec, target, dtype, config, ...)` finds the traced graph's linear weights (MatMul(x, W^T)
with W^T an initializer the weight sources produce) and its embedding table (Gather), resolves and validates the
QuantSpec against their shapes, and rewrites each into the target's form (quant_lowering). Every new initializer
gets an onnx-ir LazyTensor as its value: when `write_graph` saves, each weight is read from the checkpoint,
quantized and packed on the spot, one at a time (one source's codes are computed once for its 2-4 initializers).
The replaced float initializers leave the graph and `traced.sources`.

It returns `EagerCodes`: parameter name -> a function computing that weight's codes, the same numbers the graph
holds, so verification can run the eager model with `llamaport.models.quantized.quantize_model` layer by layer.

Integration (export.py), in order (benchmarks/int4.py `export` does the same by wrapping trace_graph):
    traced = trace_graph(...)
    if options.quant is not None:       # a QuantSpec from quant.parse_spec(--method, --group-size, ...)
        spec, codes, entry = quantize_for_export(traced, options.quant, options.target, DTYPES[options.dtype],
                                                 checkpoint)
    _write(traced, ...)
    verify against DequantizedCheckpoint(checkpoint, codes) (graph correctness; tolerance for int8 activations)
    and report quality against `checkpoint` itself; write `entry` into the manifest ("quantization").
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx import helper

from llamaport.errors import LlamaportError
from llamaport.models.quantized import QuantizedWeight

from .quant import QuantMethod, QuantSpec, resolve_spec
from .quant_lowering import (Form, LazyInitializer, WeightSource, ZeroKind, _Emitter, dq_nodes, gather_nodes,
                             matmulnbits_nodes)
from .quant_methods import gguf_codes, rtn

EagerCodes = dict[str, Callable[[], QuantizedWeight]]
GRAPH_PREFIX = "model."  # the graph wraps the model as `self.model` (weights.GRAPH_PREFIX)
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}
_NP = {torch.float32: np.float32, torch.float16: np.float16}


def linear_parameters(config) -> dict[str, tuple[int, int]]:
    """Parameter name -> (N, K) of every linear of the fused LlamaForCausalLM (head included)."""
    c = config
    d = c.head_dim
    out = {}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        out[p + "self_attn.qkv_proj.weight"] = ((c.num_attention_heads + 2 * c.num_key_value_heads) * d, c.hidden_size)
        out[p + "self_attn.o_proj.weight"] = (c.hidden_size, c.num_attention_heads * d)
        out[p + "mlp.gate_up_proj.weight"] = (2 * c.intermediate_size, c.hidden_size)
        out[p + "mlp.down_proj.weight"] = (c.hidden_size, c.intermediate_size)
    out["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    return out


def _parameter_of(name: str, source, shape_nk: tuple[int, int], candidates: dict[str, tuple[int, int]]) -> str:
    """Which model parameter a MatMul weight initializer holds (transposed).

    A source that names its origin (`source.origin`) says so; otherwise the (layer, shape) pair identifies it,
    which is unique for Llama's fused projections unless two of them have equal shapes (then refused).
    """
    origin = getattr(source, "origin", None)
    if origin:
        return origin.removeprefix(GRAPH_PREFIX)
    layer = getattr(source, "layer", None)
    prefix = f"model.layers.{layer}." if layer is not None else None
    found = [p for p, s in candidates.items() if s == shape_nk
             and (p.startswith(prefix) if prefix else not p.startswith("model.layers."))]
    if len(found) != 1:
        raise ValueError(f"cannot tell which parameter initializer {name} {shape_nk} holds ({found}); the weight "
                         "source needs an `origin`")
    return found[0]


def _rtn_source(name: str, load: Callable[[], torch.Tensor], shape, bits, group, symmetric) -> WeightSource:
    return WeightSource(name, shape, bits, group, ZeroKind.NONE if symmetric else ZeroKind.INT,
                        lambda: rtn(load(), bits, group, symmetric))


def _gguf_source(name: str, param: str, get: Callable[[str], QuantizedWeight | None], shape, fallback) -> WeightSource:
    """Stored GGUF codes of the parameter (fused parts concatenated), or the fallback source if not carried."""
    parts = [param]
    for fused, names in FUSED.items():
        if f".{fused}." in param:
            prefix, suffix = param.split(f".{fused}.")
            parts = [f"{prefix}.{n}.{suffix}" for n in names]
    first = get(parts[0])
    if first is None:
        return fallback
    kind = ZeroKind.NONE if first.zero is None else ZeroKind.FLOAT if first.float_zero else ZeroKind.INT
    return WeightSource(name, shape, first.bits, first.group, kind,
                        lambda: QuantizedWeight.cat([get(p) for p in parts]))


def _weight_of(value: ir.Value, sources) -> tuple[str | None, bool]:
    """(initializer name, True) for a MatMul weight stored (K, N); (name, False) for Transpose(W (N, K)), the form
    a weight read by two nodes keeps (a tied head: the embedding's Gather reads it too); (None, _) otherwise."""
    if value.name in sources and len(sources[value.name].shape) == 2:
        return value.name, True
    node = value.producer()
    if node is not None and node.op_type == "Transpose" and node.domain in ("", "ai.onnx"):
        perm = node.attributes.get("perm")
        inp = node.inputs[0]
        if (perm is None or list(perm.as_ints()) == [1, 0]) and inp is not None and inp.name in sources \
                and len(sources[inp.name].shape) == 2:
            return inp.name, False
    return None, True


def _ir_nodes(protos: list[onnx.NodeProto], values: dict[str, ir.Value]) -> list[ir.Node]:
    """NodeProtos from the lowering builders as onnx-ir nodes wired to `values` (extended with their outputs)."""
    nodes = []
    for p in protos:
        attrs = ir.convenience.convert_attributes({a.name: helper.get_attribute_value(a) for a in p.attribute})
        node = ir.Node(p.domain, p.op_type, [values[n] if n else None for n in p.input], attributes=attrs,
                       num_outputs=len(p.output), name=p.name)
        for value, out in zip(node.outputs, p.output):
            value.name = f"{out}__new"
            values[out] = value
        nodes.append(node)
    return nodes


def quantize_traced(traced, spec: QuantSpec, target: str, dtype: torch.dtype, config, gguf: Path | None = None,
                    precomputed: Mapping[str, QuantizedWeight] | None = None) -> tuple[QuantSpec, EagerCodes]:
    """Rewrite `traced` (graph.TracedGraph) in place to the int4 form for `target`; returns the resolved spec and
    the codes of every quantized parameter for the eager reference. See the module docstring."""
    graph = traced.model.graph
    sources = traced.sources
    candidates = linear_parameters(config)
    matmuls, gathers = [], []  # (node, weight initializer name, weight stored (K, N) i.e. pre-transposed)
    transposes = []
    for node in graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "MatMul" and node.inputs[1] is not None:
            weight, transposed = _weight_of(node.inputs[1], sources)
            if weight is not None:
                matmuls.append((node, weight, transposed))
                if not transposed:
                    transposes.append(node.inputs[1].producer())
        elif node.op_type == "Gather" and node.inputs[0] is not None and node.inputs[0].name in sources \
                and len(sources[node.inputs[0].name].shape) == 2:
            gathers.append((node, node.inputs[0].name))
    params = {}
    for _, name, transposed in matmuls:
        shape = tuple(sources[name].shape)
        params[name] = _parameter_of(name, sources[name], shape[::-1] if transposed else shape, candidates)
    head_bits = spec.head_bits
    body = {params[w]: candidates[params[w]] for _, w, _ in matmuls if params[w] != "lm_head.weight"}
    spec = resolve_spec(spec, target, body)
    form = Form.TRT if target.startswith("trt") else Form(target)
    act = np.dtype(_NP[dtype])
    get = gguf_codes(gguf, config) if spec.method is QuantMethod.GGUF else None
    if spec.method is QuantMethod.GGUF and gguf is None:
        raise LlamaportError("--method gguf needs a GGUF source (its stored Q4_0/Q4_1 codes are carried); use "
                             "--method rtn or gptq for other checkpoints")
    precomputed = precomputed or {}
    eager: EagerCodes = {}
    em = _Emitter()
    values: dict[str, ir.Value] = {}
    head_group = _head_group(config.hidden_size, spec.group_size)

    def source_for(init: str, param: str) -> WeightSource | None:
        src = sources[init]
        n, k = candidates[param]
        is_head = param == "lm_head.weight"
        if is_head and head_bits is None:
            return None
        bits = head_bits if is_head else spec.bits
        group = head_group if is_head else spec.group_size
        symmetric = True if is_head else spec.symmetric  # head/embedding symmetric: GatherBlockQuantized shares it
        load = (lambda s=src: s.load().float().T) if tuple(src.shape) == (k, n) else (lambda s=src: s.load().float())
        base = GRAPH_PREFIX + param
        rtn_src = _rtn_source(base, load, (n, k), bits, group, symmetric)
        if param in precomputed:
            q = precomputed[param]
            return WeightSource(base, (n, k), q.bits, q.group,
                                ZeroKind.NONE if q.zero is None else ZeroKind.INT, lambda: q)
        if get is not None:
            gg = _gguf_source(base, param, get, (n, k), rtn_src)
            if gg is rtn_src:
                return rtn_src
            if gg.bits != bits and not is_head:
                return rtn_src
            return gg
        return rtn_src

    shared: dict[str, WeightSource] = {}
    replaced = [*(w for _, w, _ in matmuls), *(w for _, w in gathers)]
    for node, init, _ in matmuls:
        src = shared.get(params[init]) or source_for(init, params[init])
        if src is None:
            continue
        shared[params[init]] = src
        eager[params[init]] = src.compute
        out = node.outputs[0].name
        if form is Form.ORT:
            protos = matmulnbits_nodes(em, src, node.inputs[0].name, out, act, spec.accuracy_level)
        else:
            w = f"{out}_weight"
            scale_dtype = np.dtype(np.float16) if form is Form.TRT else act
            protos = dq_nodes(em, src, w, act, scale_dtype, along_k_axis0=True)
            protos.append(helper.make_node("MatMul", [node.inputs[0].name, w], [out], name=f"{node.name}_q"))
        _replace(graph, node, protos, em, values)
    for node, init in gathers:
        tied = getattr(config, "tie_word_embeddings", False)
        param = "lm_head.weight" if tied and "lm_head.weight" in shared else "model.embed_tokens.weight"
        if head_bits is None:
            continue
        src = shared.get(param)
        head_codes = src is not None and param == "lm_head.weight"  # the head's MatMulNBits B holds them (ort)
        if src is None:  # untied embedding: its own source, (V, H) as stored
            s = sources[init]
            src = _rtn_source(GRAPH_PREFIX + "model.embed_tokens.weight", lambda s=s: s.load().float(),
                              tuple(s.shape), head_bits, head_group, True)
            if get is not None:
                src = _gguf_source(src.name, "model.embed_tokens.weight", get, tuple(s.shape), src)
            eager["model.embed_tokens.weight"] = src.compute
        elif tied:
            eager["model.embed_tokens.weight"] = src.compute
        if src.zero is not ZeroKind.NONE:
            raise LlamaportError("the embedding's codes have zero points, which GatherBlockQuantized cannot take; "
                                 "use --lm-head int8")
        protos = gather_nodes(em, src, form, node.inputs[1].name, node.outputs[0].name, act, tied=head_codes)
        _replace(graph, node, protos, em, values)
    for node in transposes:  # a Transpose of a weight the head's MatMul no longer reads
        if node.graph is not None and not any(out.uses() for out in node.outputs):
            graph.remove(node, safe=True)
    for init in replaced:
        if init in graph.initializers and not graph.initializers[init].uses():
            graph.initializers.pop(init)
            sources.pop(init, None)
    if form is Form.ORT and "com.microsoft" not in traced.model.opset_imports:
        traced.model.opset_imports["com.microsoft"] = 1
    return spec, eager


def _head_group(hidden: int, group: int) -> int:
    """Block size of the 8/4-bit head and embedding: the body's, or the largest that divides the hidden size."""
    if hidden % group == 0:
        return group
    return next(g for g in (128, 64, 32, 16) if hidden % g == 0)


def _replace(graph: ir.Graph, old: ir.Node, protos: list[onnx.NodeProto], em: _Emitter,
             values: dict[str, ir.Value]) -> None:
    for name, lazy in em.initializers.items():
        if name not in values:
            values[name] = _initializer(graph, lazy)
    for v in old.inputs:
        if v is not None:
            values[v.name] = v
    nodes = _ir_nodes(protos, values)
    ir.convenience.replace_nodes_and_values(graph, old, [old], nodes, list(old.outputs), [nodes[-1].outputs[0]])


def _initializer(graph: ir.Graph, lazy: LazyInitializer) -> ir.Value:
    value = ir.Value(name=lazy.name, shape=ir.Shape(lazy.shape), type=ir.TensorType(ir.DataType(lazy.dtype)),
                     const_value=lazy.to_ir())
    graph.register_initializer(value)
    return value


class DequantizedCheckpoint:
    """A checkpoint whose quantized tensors read as their dequantized values: the eager reference of an int4 graph.

    Wraps the source checkpoint for `reference.layerwise_logits` (which reads unfused Hugging Face names one at a
    time): `tensor("...q_proj.weight")` returns the q rows of the dequantized fused qkv codes, the embedding and a
    tied head the dequantized table; everything else passes through. One fused group's codes are kept between the
    reads of its parts (q, k, v are read in a row), so memory stays at one layer.
    """

    def __init__(self, checkpoint, codes: EagerCodes):
        self._checkpoint, self._codes = checkpoint, codes
        self._last: tuple[str, torch.Tensor] | None = None
        self._parts: dict[str, tuple[str, int, int]] = {}  # unfused name -> (fused name, row start, row end)
        config = checkpoint.config
        d = config.head_dim
        widths = {"self_attn": [config.num_attention_heads * d, config.num_key_value_heads * d,
                                config.num_key_value_heads * d],
                  "mlp": [config.intermediate_size, config.intermediate_size]}
        for fused_name in codes:
            for fused, members in FUSED.items():
                if f".{fused}." in fused_name:
                    prefix, suffix = fused_name.split(f".{fused}.")
                    start = 0
                    for member, width in zip(members, widths[fused.split(".")[0]]):
                        self._parts[f"{prefix}.{member}.{suffix}"] = (fused_name, start, start + width)
                        start += width

    def __getattr__(self, name):
        return getattr(self._checkpoint, name)

    def _dequantized(self, name: str) -> torch.Tensor:
        if self._last is None or self._last[0] != name:
            self._last = (name, self._codes[name]().dequantize())
        return self._last[1]

    def tensor(self, name: str) -> torch.Tensor:
        if name in self._parts:
            fused, start, end = self._parts[name]
            return self._dequantized(fused)[start:end]
        if name in self._codes:
            return self._dequantized(name)
        return self._checkpoint.tensor(name)


def quantize_for_export(traced, spec: QuantSpec, target: str, dtype: torch.dtype, checkpoint,
                        progress: Callable[[int], None] | None = None) -> tuple[QuantSpec, EagerCodes, dict]:
    """The one call export makes: calibrate when the method needs it, rewrite `traced`, describe the result.

    Returns (resolved spec, eager codes for DequantizedCheckpoint, manifest entry). GPTQ runs here, streamed layer
    by layer from the checkpoint on the calibration text (built-in unless spec.calib); its codes (the int4 model,
    an eighth of fp32) are kept until the graph is written.
    """
    import hashlib

    from .quant_methods import CALIBRATION_TEXT, calibration_ids, gptq_checkpoint

    config = checkpoint.config
    precomputed = None
    calib_sha = None
    gguf = Path(checkpoint.source) if checkpoint.format == "gguf" else None
    if spec.method is QuantMethod.GPTQ:
        # resolve first so a refused option fails before minutes of calibration
        body = {p: s for p, s in linear_parameters(config).items() if p != "lm_head.weight"}
        spec = resolve_spec(spec, target, body)
        if not checkpoint.tokenizer_files:
            raise LlamaportError(f"{checkpoint.source}: --method gptq tokenizes its calibration text, but this "
                                 "checkpoint has no tokenizer files; put them beside it or use --method rtn")
        from llamaport.runtime.tokenizer import Tokenizer

        path = spec.calib or CALIBRATION_TEXT
        calib_sha = hashlib.sha256(path.read_bytes()).hexdigest()
        tokenizer = Tokenizer.from_files(checkpoint.tokenizer_files)
        ids = calibration_ids(tokenizer.encode, spec.calib, spec.calib_tokens, spec.calib_seq_len)
        precomputed = gptq_checkpoint(checkpoint, ids, spec.bits, spec.group_size, spec.symmetric, progress)
    spec, codes = quantize_traced(traced, spec, target, dtype, config,
                                  gguf=gguf if spec.method is QuantMethod.GGUF else None, precomputed=precomputed)
    manifest = {"bits": spec.bits, "method": spec.method.value, "group_size": spec.group_size,
                "symmetric": spec.symmetric, "lm_head": spec.lm_head.value,
                "accuracy_level": int(spec.accuracy_level) if target == "ort" else None,
                "calibration_sha256": calib_sha, "calibration_tokens": spec.calib_tokens if calib_sha else None}
    return spec, codes, manifest
