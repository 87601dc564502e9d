"""Weight sources: each graph initializer as a function that reads it from the checkpoint when it is written.

The graph is traced with fake weights (exporter/graph.py), so tracing holds names and shapes only. Every weight
initializer then has a `WeightSource`: a zero-argument `load()` returning the torch tensor exactly as the graph
stores it (layout and dtype), built from one checkpoint tensor or one fused group (qkv = cat(q, k, v),
gate_up = cat(gate, up)) plus the transforms the ONNX optimizer would have folded into it (a Transpose of a
MatMul weight, a Cast of an fp16 norm weight to fp32). `write_graph` sets each as an `onnx_ir.LazyTensor` and
`onnx_ir.save` writes `model.onnx.data` one tensor at a time: read, convert, write, released.

Hook for graph rewrites (e.g. int4 quantization): between `exporter.graph.trace_graph` and `write_graph`, a pass
gets the `TracedGraph` (an `onnx_ir.Model` whose weight initializers have no value yet, and `sources`:
initializer name -> `WeightSource`). It may rewrite nodes (MatMul -> MatMulNBits), drop initializers, and add
new ones, giving each new initializer a `WeightSource` whose `load()` returns its final tensor (e.g. packed int4
built from `sources[old].load()`); `write_graph` writes whatever `sources` holds for the graph's initializers.
Loads run one at a time, in the graph's initializer order; a source must not keep what it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import ml_dtypes
import numpy as np
import onnx_ir as ir
import torch

from llamaport.errors import CheckpointError
from llamaport.models.loaders.checkpoint import Checkpoint

# The graph module wraps the model as `self.model`, so parameter `p` is initializer `model.p`.
GRAPH_PREFIX = "model."
# What onnxscript's constant folder folds (exporter/graph.py runs it with the weights absent, so it cannot look):
# inputs up to this many elements, or larger ones read by this node alone for these ops; outputs up to this many
# elements unless they replace inputs at least as large. Same numbers as onnxscript.optimizer's defaults.
FOLD_INPUT_LIMIT, FOLD_OUTPUT_LIMIT, ALWAYS_FOLD = 8192, 512 * 512, {"Transpose"}
# Fused groups: parameter suffix -> the checkpoint tensors concatenated (along dim 0) to make it.
FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}
_TORCH_TO_IR = {torch.float32: ir.DataType.FLOAT, torch.float16: ir.DataType.FLOAT16,
                torch.bfloat16: ir.DataType.BFLOAT16}
_IR_TO_TORCH = {v: k for k, v in _TORCH_TO_IR.items()}


@dataclass(frozen=True)
class WeightSource:
    load: Callable[[], torch.Tensor]  # the tensor in the graph's layout and dtype, read now
    shape: tuple[int, ...]
    dtype: torch.dtype
    layer: int | None = None  # decoder layer it belongs to (None: embeddings, final norm, heads), for progress


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    if "layers" in parts:
        index = parts.index("layers") + 1
        if index < len(parts) and parts[index].isdigit():
            return int(parts[index])
    return None


def checkpoint_names(parameter: str) -> tuple[str, ...]:
    """The checkpoint tensors (Hugging Face names) that make parameter `parameter` of the (fused) model."""
    for fused, parts in FUSED.items():
        marker = f".{fused}."
        if marker in parameter:
            prefix, suffix = parameter.split(marker)
            return tuple(f"{prefix}.{part}.{suffix}" for part in parts)
    return (parameter,)


def _read(checkpoint: Checkpoint, names: tuple[str, ...], shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    parts = [checkpoint.tensor(name) for name in names]
    tensor = parts[0] if len(parts) == 1 else torch.cat(parts)
    if tuple(tensor.shape) != shape:
        raise CheckpointError(
            f"{checkpoint.source}: tensor '{names[0]}' makes shape {tuple(tensor.shape)}, but config.json implies "
            f"{shape}; the config does not match the weights"
        )
    return tensor.to(dtype).contiguous()


def parameter_sources(checkpoint: Checkpoint, model: torch.nn.Module) -> dict[str, WeightSource]:
    """Initializer name -> source for every parameter of `model` (fake or meta; its shapes and dtypes are read).

    Tied parameters (one tensor under two names) read the checkpoint's tensor under the first name. Every
    checkpoint tensor a source needs is checked to exist now, so a missing one fails before anything is written.
    """
    sources: dict[str, WeightSource] = {}
    available = set(checkpoint.tensor_names())
    used: set[str] = {"lm_head.weight"}  # a tied head, or a classifier built from a language model, ignores it
    for name, param in model.named_parameters(remove_duplicate=False):
        names = checkpoint_names(name)
        if name == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            names = ("model.embed_tokens.weight",)  # tied: the embedding is the head, whatever else is stored
        missing = [n for n in names if n not in available]
        if missing:
            raise CheckpointError(
                f"{checkpoint.source}: missing tensors {missing[:3]}; the weight files are incomplete or belong to "
                "another model"
            )
        used.update(names)
        shape, dtype = tuple(param.shape), param.dtype
        sources[GRAPH_PREFIX + name] = WeightSource(
            lambda names=names, shape=shape, dtype=dtype: _read(checkpoint, names, shape, dtype),
            shape, dtype, layer_of(name))
    unexpected = sorted(available - used)
    if unexpected:  # as materialize() says it: the config describes another model than these weights
        raise CheckpointError(f"{checkpoint.source}: unexpected tensor '{unexpected[0]}' for this Llama config")
    return sources


Fold = tuple[Callable[[torch.Tensor], torch.Tensor], tuple[int, ...], torch.dtype]


def _transform(node: ir.Node, source: WeightSource) -> Fold | None:
    """The node's op on its weight input as (torch function, output shape, output dtype); None for an op
    that is not one of those that fold onto weights."""
    if node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
        return None
    if node.op_type == "Transpose":
        perm = node.attributes.get("perm")
        order = tuple(perm.as_ints()) if perm is not None else tuple(reversed(range(len(source.shape))))
        return (lambda t: t.permute(*order).contiguous()), tuple(source.shape[i] for i in order), source.dtype
    if node.op_type == "Cast":
        to = _IR_TO_TORCH.get(ir.DataType(node.attributes["to"].as_int()))
        return None if to is None else ((lambda t: t.to(to)), source.shape, to)
    if node.op_type == "Identity":
        return (lambda t: t), source.shape, source.dtype
    return None


def fold_weight_nodes(graph: ir.Graph, sources: dict[str, WeightSource]) -> None:
    """Fold nodes that read weights into the weights' sources, as the constant folder would with real weights.

    The node's output becomes an initializer of the same name whose source applies the node's op to its input's
    source, and the input initializer goes if nothing else reads it: the graph comes out as tracing with real
    weights gives it, without reading any. Runs after inlining, before onnxscript's optimizer.
    """
    for node in list(graph):
        if len(node.outputs) != 1 or not node.inputs or node.inputs[0] is None:
            continue
        weight, out = node.inputs[0], node.outputs[0]
        if weight.name not in sources or not weight.is_initializer() or weight.is_graph_input():
            continue
        if out.is_graph_output():
            continue
        parent = sources[weight.name]
        fold = _transform(node, parent)
        if fold is None:
            continue
        transform, shape, dtype = fold
        in_size, out_size = math.prod(parent.shape), math.prod(shape)
        if in_size > FOLD_INPUT_LIMIT and not (node.op_type in ALWAYS_FOLD and len(weight.consumers()) == 1):
            continue
        if out_size > FOLD_OUTPUT_LIMIT and out_size > (in_size if len(weight.uses()) == 1 else 0):
            continue
        name = out.name
        folded = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(_TORCH_TO_IR[dtype]))
        sources[name] = WeightSource(lambda parent=parent, f=transform: f(parent.load()), shape, dtype, parent.layer)
        out.replace_all_uses_with(folded)
        graph.remove(node, safe=True)
        out.name = None
        graph.initializers.add(folded)
        if not weight.uses():
            graph.initializers.pop(weight.name)


def numpy_of(tensor: torch.Tensor) -> np.ndarray:
    """A numpy view of `tensor` (bf16 through ml_dtypes, which numpy lacks)."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def lazy_tensor(name: str, source: WeightSource) -> ir.LazyTensor:
    def load() -> ir.Tensor:
        return ir.Tensor(numpy_of(source.load()), name=name)

    return ir.LazyTensor(load, dtype=_TORCH_TO_IR[source.dtype], shape=ir.Shape(source.shape), name=name)
