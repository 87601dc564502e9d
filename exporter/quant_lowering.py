"""Graph forms of a quantized linear / embedding, and the rewrite that puts them into a traced graph.

The traced graph lowers `nn.Linear` as `MatMul(x, W^T)` with W^T a (K, N) initializer (qkv and gate/up already
fused), and the token embedding as `Gather(E, input_ids)` with E (V, H) (for tied heads the same E, plus a separate
transposed copy for the head's MatMul). `quantize_graph` swaps those for, per target:

- ort:  com.microsoft.MatMulNBits(x, B, scales[, zero_points]) (bits 4, or 8 for the head) and
        com.microsoft.GatherBlockQuantized(data, ids, scales[, zero_points]) for the embedding (a tied one reads
        the head's B and scales: one stored copy, see gather_nodes and alias_reshaped_initializers);
- onnx: DequantizeLinear(int4/uint4 (K, N), scales (K/g, N)[, zero], axis=0, block_size=g) -> MatMul, and
        DequantizeLinear(axis=1) -> Gather for the embedding; GGUF Q4_1's float minimums are added after the DQ
        (DequantizeLinear has no float zero point);
- trt:  symmetric int4 (K, N) -> DequantizeLinear(axis=0, block_size 64/128, fp16 scales) -> MatMul (a Cast to the
        activation dtype between them for fp32 graphs).

Every new initializer comes back as a `LazyInitializer` whose `produce()` computes its array from the source weight
when called (the codes of one source are computed once and shared by its 2-4 initializers), so a streaming writer
holds one weight at a time. `attach_initializers` embeds them for small graphs and tests.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import quant_pack as pack
from .quant import AccuracyLevel, QuantizedWeight

MS_DOMAIN = "com.microsoft"


class Form(str, enum.Enum):
    ORT = "ort"
    ONNX = "onnx"
    TRT = "trt"


class ZeroKind(enum.Enum):
    NONE = "none"  # symmetric
    INT = "int"  # integer codes
    FLOAT = "float"  # float zero points (GGUF Q4_1)


@dataclass
class WeightSource:
    """One weight to quantize: its (N, K) shape and layout, known before `compute` runs (the graph needs them)."""

    name: str  # readable base for the new initializers, e.g. model.layers.0.self_attn.qkv_proj.weight
    shape: tuple[int, int]  # (N, K) as nn.Linear stores it
    bits: int
    group: int
    zero: ZeroKind
    compute: Callable[[], QuantizedWeight]
    _memo: list = field(default_factory=list, repr=False)
    _pending: int = field(default=0, repr=False)

    def codes(self) -> QuantizedWeight:
        """Computed once for all this source's initializers; dropped after the last one is produced."""
        if not self._memo:
            q = self.compute()
            if tuple(q.shape) != tuple(self.shape) or q.bits != self.bits or q.group != self.group:
                raise ValueError(f"{self.name}: computed codes {q.shape} bits {q.bits} group {q.group} differ from "
                                 f"the declared {self.shape} bits {self.bits} group {self.group}")
            self._memo.append(q)
        q = self._memo[0]
        self._pending -= 1
        if self._pending <= 0:
            self._memo.clear()
        return q


@dataclass
class LazyInitializer:
    name: str
    dtype: int  # onnx TensorProto data type
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]

    def to_proto(self) -> TensorProto:
        array = self.produce()
        if tuple(array.shape) != tuple(self.shape):
            raise ValueError(f"{self.name}: produced shape {array.shape}, declared {self.shape}")
        return numpy_helper.from_array(array, self.name)

    def to_ir(self):
        """An onnx-ir LazyTensor (for writers that stream through onnx-ir)."""
        import onnx_ir as ir

        return ir.LazyTensor(lambda: ir.tensor(self.produce()), dtype=ir.DataType(self.dtype),
                             shape=ir.Shape(self.shape), name=self.name)


_NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


class _Emitter:
    """Collects new initializers, each tied to its source's shared codes computation."""

    def __init__(self):
        self.initializers: dict[str, LazyInitializer] = {}

    def add(self, source: WeightSource, suffix: str, dtype: int, shape, fn: Callable[[QuantizedWeight], np.ndarray]):
        name = f"{source.name}.{suffix}"
        if name not in self.initializers:
            source._pending += 1
            self.initializers[name] = LazyInitializer(name, dtype, tuple(int(s) for s in shape),
                                                      lambda: fn(source.codes()))
        return name


def _scales(q: QuantizedWeight, dtype: np.dtype, transpose: bool) -> np.ndarray:
    s = q.scales.numpy().astype(dtype)
    return np.ascontiguousarray(s.T if transpose else s)


def _matmulnbits_b(em: _Emitter, src: WeightSource) -> str:
    """MatMulNBits' B (N, K/g, g*bits/8) uint8; a tied embedding's GatherBlockQuantized reads the same bytes."""
    n, k = src.shape
    return em.add(src, f"q{src.bits}", TensorProto.UINT8, (n, k // src.group, src.group * src.bits // 8),
                  pack.pack_matmulnbits_b)


def matmulnbits_nodes(em: _Emitter, src: WeightSource, x: str, out: str, act: np.dtype,
                      level: AccuracyLevel) -> list[onnx.NodeProto]:
    n, k = src.shape
    blocks = k // src.group
    inputs = [x, _matmulnbits_b(em, src), em.add(src, "scales", _NP_TO_ONNX[act], (n, blocks),
                                                  lambda q: _scales(q, act, False))]
    if src.zero is ZeroKind.INT:
        width = blocks if src.bits == 8 else (blocks + 1) // 2
        inputs.append(em.add(src, "zeros", TensorProto.UINT8, (n, width), pack.pack_zero_points))
    if src.zero is not ZeroKind.FLOAT:
        return [helper.make_node("MatMulNBits", inputs, [out], name=f"{out}_MatMulNBits", domain=MS_DOMAIN, K=k,
                                 N=n, bits=src.bits, block_size=src.group, accuracy_level=int(level))]
    # Float zero points (GGUF Q4_1): ONNX Runtime's CPU MatMulNBits takes them but then dequantizes the whole
    # weight per call (measured 40x slower than integer zero points, 16 ms vs 0.38 ms for 576->3072). Exactly the
    # same product, split the way llama.cpp's Q4_1 x Q8_1 dot product does it:
    #   (q - z) * d = (q - 8) * d + (8 - z) * d
    #   y = MatMulNBits(x, codes, d)              (default zero point 8: the fast kernel)
    #     + BlockSums(x) @ ((8 - z) * d)^T       (BlockSums: x summed over each block of K, (B, S, K/g))
    # The second term reads one float per block: 1 bit per weight more, with the fp32 MatMul's accuracy.
    mid = float(1 << (src.bits - 1))

    def offsets(q: QuantizedWeight) -> np.ndarray:  # (K/g, N)
        return np.ascontiguousarray(((mid - q.zero) * q.scales).numpy().astype(act).T)

    m = em.add(src, "block_offsets", _NP_TO_ONNX[act], (blocks, n), offsets)
    shape = em_const(em, f"blocks_shape_{blocks}x{src.group}", (0, 0, blocks, src.group))  # x is (B, S, K)
    axes = em_const(em, "last_axis", (-1,))
    return [
        helper.make_node("MatMulNBits", inputs, [f"{out}_sym"], name=f"{out}_MatMulNBits", domain=MS_DOMAIN, K=k,
                         N=n, bits=src.bits, block_size=src.group, accuracy_level=int(level)),
        helper.make_node("Reshape", [x, shape], [f"{out}_xblocks"], name=f"{out}_Reshape_blocks"),
        helper.make_node("ReduceSum", [f"{out}_xblocks", axes], [f"{out}_xsums"], name=f"{out}_BlockSums",
                         keepdims=0),
        helper.make_node("MatMul", [f"{out}_xsums", m], [f"{out}_offsets"], name=f"{out}_MatMul_offsets"),
        helper.make_node("Add", [f"{out}_sym", f"{out}_offsets"], [out], name=f"{out}_Add_offsets"),
    ]


def _dq_dtype(src: WeightSource) -> int:
    signed = src.zero is ZeroKind.NONE
    if src.bits == 4:
        return TensorProto.INT4 if signed else TensorProto.UINT4
    return TensorProto.INT8 if signed else TensorProto.UINT8


def _dq_transposed(q: QuantizedWeight, transpose: bool):
    w = pack.dq_weight(q)  # (K, N)
    return np.ascontiguousarray(w.T) if not transpose else w


def dq_nodes(em: _Emitter, src: WeightSource, out: str, act: np.dtype, scale_dtype: np.dtype,
             along_k_axis0: bool) -> list[onnx.NodeProto]:
    """DequantizeLinear producing the float weight named `out`: (K, N) for a MatMul (along_k_axis0) or (N, K)."""
    n, k = src.shape
    blocks = k // src.group
    shape_w, shape_s = ((k, n), (blocks, n)) if along_k_axis0 else ((n, k), (n, blocks))
    t = along_k_axis0
    tag = "kn" if t else "nk"  # a tied head (K, N) and embedding (N, K) of one source need both layouts
    w = em.add(src, f"dq{src.bits}_{tag}", _dq_dtype(src), shape_w, lambda q: _dq_transposed(q, t))
    s = em.add(src, f"dq_scales_{tag}", _NP_TO_ONNX[scale_dtype], shape_s, lambda q: _scales(q, scale_dtype, t))
    inputs = [w, s]
    if src.zero is ZeroKind.INT:
        inputs.append(em.add(src, f"dq_zeros_{tag}", _dq_dtype(src), shape_s,
                             lambda q: pack.dq_zero_point(q) if t else np.ascontiguousarray(pack.dq_zero_point(q).T)))
    axis = 0 if along_k_axis0 else 1
    nodes = []
    dq_out = out if src.zero is not ZeroKind.FLOAT and scale_dtype == act else f"{out}_dq"
    nodes.append(helper.make_node("DequantizeLinear", inputs, [dq_out], name=f"{out}_DequantizeLinear", axis=axis,
                                  block_size=src.group))
    if src.zero is ZeroKind.FLOAT:
        # w = (q - z) * s = q*s + m with m = -z*s, added per block: (K/g, g, N) + (K/g, 1, N).
        def mins(q: QuantizedWeight) -> np.ndarray:
            m = (-(q.zero * q.scales)).numpy().astype(scale_dtype)  # (N, K/g)
            return np.ascontiguousarray(m.T[:, None, :] if t else m[:, :, None])
        m_shape = (blocks, 1, n) if t else (n, blocks, 1)
        m = em.add(src, f"dq_mins_{tag}", _NP_TO_ONNX[scale_dtype], m_shape, mins)
        blocked = (blocks, src.group, n) if t else (n, blocks, src.group)
        shape_b = em_const(em, f"{src.name}.blocked_shape", blocked)
        shape_f = em_const(em, f"{src.name}.{'kn' if t else 'nk'}_shape", shape_w)
        final = out if scale_dtype == act else f"{out}_f"
        nodes += [
            helper.make_node("Reshape", [dq_out, shape_b], [f"{out}_blocks"], name=f"{out}_Reshape_blocks"),
            helper.make_node("Add", [f"{out}_blocks", m], [f"{out}_plus_min"], name=f"{out}_AddMin"),
            helper.make_node("Reshape", [f"{out}_plus_min", shape_f], [final], name=f"{out}_Reshape"),
        ]
        dq_out = final
    if scale_dtype != act:
        nodes.append(helper.make_node("Cast", [dq_out], [out], name=f"{out}_Cast", to=_NP_TO_ONNX[act]))
    return nodes


def em_const(em: _Emitter, name: str, values) -> str:
    """A small int64 constant (shapes), produced without touching any weight."""
    array = np.array(values, dtype=np.int64)
    if name not in em.initializers:
        em.initializers[name] = LazyInitializer(name, TensorProto.INT64, array.shape, lambda: array)
    return name


def gather_nodes(em: _Emitter, src: WeightSource, form: Form, ids: str, out: str, act: np.dtype,
                 tied: bool = False) -> list:
    """The embedding lookup of `src` (V, H). `tied`: `src` is also the LM head's, whose codes it reads (ort)."""
    n, k = src.shape  # (V, H)
    blocks = k // src.group
    if form is Form.ORT:
        nodes = []
        if tied:
            # The head's B (V, H/g, g*bits/8) holds the table's bytes in the table's order: per row, the codes along
            # H, two per byte low nibble first for 4 bits (quant_pack), the layout GatherBlockQuantized reads for
            # uint8 data (onnxruntime contrib_ops/cpu/quantization/gather_block_quantized.cc, Get4BitElement:
            # element 2j in the low nibble of byte j; uint8 data needs gather_axis 0 and quantize_axis last). So
            # the embedding reads B through a Reshape to (V, H*bits/8) and the file stores the codes once.
            # ONNX Runtime would fold that Reshape into a second in-memory copy at session load, and keep B
            # resident beside MatMulNBits' prepacked copy (session_state.cc frees a prepacked initializer only
            # when every reader prepacked it): `alias_reshaped_initializers` replaces it, once the graph is
            # written, by a second initializer over the same stored bytes, which ONNX Runtime maps on its own:
            # B is freed after prepacking and the table's pages are read in as rows are gathered, as before.
            shape = em_const(em, f"{src.name}.g{src.bits}_shape", (n, k * src.bits // 8))
            data = f"{out}_codes"
            nodes.append(helper.make_node("Reshape", [_matmulnbits_b(em, src), shape], [data],
                                          name=f"{out}_Reshape_codes"))
        else:
            data = em.add(src, f"g{src.bits}", TensorProto.UINT8, (n, k * src.bits // 8), pack.pack_gather_data)
        s = em.add(src, "scales", _NP_TO_ONNX[act], (n, blocks), lambda q: _scales(q, act, False))
        inputs = [data, ids, s]
        if src.zero is ZeroKind.INT:
            inputs.append(em.add(src, "g_zeros", TensorProto.UINT8, (n, blocks * src.bits // 8),
                                 lambda q: pack.pack_gather_data(QuantizedWeight(q.zero, q.scales, None, q.bits, 1))))
        elif src.zero is ZeroKind.FLOAT:
            raise ValueError(f"{src.name}: GatherBlockQuantized takes integer zero points only")
        return nodes + [helper.make_node("GatherBlockQuantized", inputs, [out], name=f"{out}_GatherBlockQuantized",
                                         domain=MS_DOMAIN, bits=src.bits, block_size=src.group, gather_axis=0,
                                         quantize_axis=1)]
    scale_dtype = np.dtype(np.float16) if form is Form.TRT else act
    table = f"{out}_table"
    return dq_nodes(em, src, table, act, scale_dtype, along_k_axis0=False) + [
        helper.make_node("Gather", [table, ids], [out], name=f"{out}_Gather", axis=0)]


def quantize_graph(model: onnx.ModelProto, linears: Mapping[str, WeightSource], form: Form | str,
                   act_dtype=np.float32, level: AccuracyLevel = AccuracyLevel.INT8,
                   embeddings: Mapping[str, WeightSource] | None = None) -> dict[str, LazyInitializer]:
    """Rewrite MatMul(x, B) for B in `linears` and Gather(E, ids) for E in `embeddings`, in place.

    `linears`: graph initializer name of a (K, N) MatMul weight -> its source ((N, K) as nn.Linear stores it).
    `embeddings`: graph initializer name of a (V, H) Gather table -> its source. Replaced initializers are removed
    from the graph; the new ones are returned (not added), for the writer to stream. A source given for both a head
    and a tied embedding shares its scales between the two forms.
    """
    form = Form(form)
    act = np.dtype(act_dtype)
    embeddings = embeddings or {}
    graph = model.graph
    em = _Emitter()
    nodes, replaced = [], set()
    for node in graph.node:
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and node.input[1] in linears:
            src = linears[node.input[1]]
            replaced.add(node.input[1])
            if form is Form.ORT:
                nodes += matmulnbits_nodes(em, src, node.input[0], node.output[0], act, level)
            else:
                w = f"{node.output[0]}_weight"
                scale_dtype = np.dtype(np.float16) if form is Form.TRT else act
                nodes += dq_nodes(em, src, w, act, scale_dtype, along_k_axis0=True)
                nodes.append(helper.make_node("MatMul", [node.input[0], w], list(node.output), name=node.name))
        elif node.op_type == "Gather" and node.domain in ("", "ai.onnx") and node.input[0] in embeddings:
            replaced.add(node.input[0])
            src = embeddings[node.input[0]]
            tied = any(lin is src for lin in linears.values())
            nodes += gather_nodes(em, src, form, node.input[1], node.output[0], act, tied=tied)
        else:
            nodes.append(node)
    still_used = {name for node in nodes for name in node.input}
    missing = (set(linears) | set(embeddings)) - replaced
    if missing:
        raise ValueError(f"initializers not found as MatMul/Gather weights: {sorted(missing)[:3]}")
    kept = [t for t in graph.initializer if t.name not in replaced or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    if form is Form.ORT and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_operatorsetid(MS_DOMAIN, 1))
    return em.initializers


def alias_reshaped_initializers(model: onnx.ModelProto, path) -> int:
    """Replace each Reshape of an externally stored initializer by a constant shape with an initializer of the new
    shape over the same stored bytes (a row-major Reshape keeps the bytes); returns how many.

    For a graph saved at `path` with its external data (the small shape constants are read from there). The tied
    embedding's Reshape of the head's codes (`gather_nodes`) becomes a second initializer entry, not a second copy
    in the file; ONNX Runtime maps each external initializer on its own, so this costs no memory either.
    """
    graph = model.graph
    folder = os.path.dirname(os.path.abspath(path))
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    aliased, kept, inputs = [], [], set()
    for node in graph.node:
        data = inits.get(node.input[0]) if node.op_type == "Reshape" and node.domain in ("", "ai.onnx") else None
        shape = inits.get(node.input[1]) if data is not None and len(node.input) > 1 else None
        if shape is None or data.data_location != TensorProto.EXTERNAL or node.output[0] in outputs:
            kept.append(node)
            continue
        dims = [int(d) for d in numpy_helper.to_array(shape, base_dir=folder).reshape(-1)]
        if any(d <= 0 for d in dims) or int(np.prod(dims)) != int(np.prod(data.dims)):
            kept.append(node)  # 0 / -1 entries: not worth resolving, ONNX Runtime folds it
            continue
        alias = TensorProto(name=node.output[0], data_type=data.data_type, dims=dims,
                            data_location=TensorProto.EXTERNAL)
        alias.external_data.extend(data.external_data)
        aliased.append(alias)
        inputs.update(node.input)
    if not aliased:
        return 0
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(aliased)
    used = {name for node in graph.node for name in node.input} | outputs
    initializers = [t for t in graph.initializer if t.name in used or t.name not in inputs]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    new = {t.name for t in aliased}
    value_info = [v for v in graph.value_info if v.name not in new]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    return len(aliased)


def attach_initializers(model: onnx.ModelProto, initializers: Mapping[str, LazyInitializer]) -> None:
    """Produce every lazy initializer and embed it in the graph (small graphs and tests; export streams them)."""
    for lazy in initializers.values():
        model.graph.initializer.append(lazy.to_proto())


def source_from_weight(name: str, weight, bits: int, group: int, symmetric: bool) -> WeightSource:
    """An RTN source over a float (N, K) tensor (or a callable returning one, read when the codes are needed)."""
    from .quant_methods import rtn

    get = weight if callable(weight) else (lambda: weight)
    shape = tuple(weight().shape) if callable(weight) else tuple(weight.shape)
    return WeightSource(name, shape, bits, group, ZeroKind.NONE if symmetric else ZeroKind.INT,
                        lambda: rtn(get(), bits, group, symmetric))


def source_from_codes(name: str, q: QuantizedWeight | Callable[[], QuantizedWeight], shape=None, bits=None,
                      group=None, zero: ZeroKind | None = None) -> WeightSource:
    """A source over precomputed codes (GPTQ results) or a callable producing them (GGUF blocks)."""
    if isinstance(q, QuantizedWeight):
        kind = ZeroKind.NONE if q.zero is None else ZeroKind.FLOAT if q.float_zero else ZeroKind.INT
        return WeightSource(name, q.shape, q.bits, q.group, kind, lambda: q)
    return WeightSource(name, tuple(shape), bits, group, zero, q)


__all__ = ["Form", "ZeroKind", "WeightSource", "LazyInitializer", "quantize_graph", "attach_initializers",
           "alias_reshaped_initializers", "source_from_weight", "source_from_codes"]
