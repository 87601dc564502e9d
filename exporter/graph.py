"""Trace the eager Llama with its static KV cache into one ONNX graph that serves prefill and decode.

Inputs:  input_ids (B, S) int64, past_lengths (B,) int64, input_lengths (B,) int64 (real tokens per row of a
         right-padded call; logits are taken at input_lengths - 1), past.{i}.key / past.{i}.value (B, H_kv, S_max, D).
Outputs: logits (B, 1, V) float32 (or (B, S, V) with logits="all"), present.{i}.key / present.{i}.value.
A runtime binds present.{i}.* to the same buffers as past.{i}.*, so the cache is updated in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir
import onnx_ir.passes.common
import onnxscript.optimizer
import onnxscript.rewriter.onnx_fusions
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from llamaport import enginedir
from llamaport.enginedir import LogitsMode, Target, Task
from llamaport.models import LlamaConfig
from llamaport.models.rope import inverse_frequencies, rotary_cos_sin
from llamaport.plugins.translations import ONNX_OPSET, Heads, translation_table

from .fusions import postprocess
from .replicate import TRACED_LAYERS, NotReplicable, replicate_layers
from .weights import WeightSource, fold_weight_nodes, lazy_tensor, layer_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphSpec:
    target: Target
    max_seq: int  # cache capacity S_max
    max_batch: int
    logits: LogitsMode = LogitsMode.LAST
    task: Task = Task.CAUSAL_LM

    def __post_init__(self):  # spellings ("ort") become the typed names, so comparisons below are by identity
        for name, kind in (("target", Target), ("logits", LogitsMode), ("task", Task)):
            object.__setattr__(self, name, kind(getattr(self, name)))


def input_names(config: LlamaConfig, spec: GraphSpec) -> list[str]:
    return enginedir.input_names(config.num_hidden_layers, spec.task, spec.logits)


def output_names(config: LlamaConfig, spec: GraphSpec) -> list[str]:
    return enginedir.output_names(config.num_hidden_layers, spec.task)


class DecoderGraph(nn.Module):
    """Flat-argument wrapper: torch.export sees tensors only, one per cache buffer."""

    def __init__(self, model: nn.Module, last_only: bool):
        super().__init__()
        self.model, self.last_only = model, last_only

    def forward(self, input_ids, past_lengths, *rest):
        input_lengths = rest[0] if self.last_only else None
        flat = rest[1:] if self.last_only else rest
        cache = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        logits, cache = self.model(input_ids, past_lengths, cache, last_only=self.last_only, input_lengths=input_lengths)
        # float32 logits whatever the graph dtype: sampling and accuracy checks want them exact.
        return (logits.float(), *[t for pair in cache for t in pair])


class ClassifierGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids).float()


def example_inputs(config: LlamaConfig, spec: GraphSpec, dtype: torch.dtype):
    """Inputs for tracing, and their dynamic dims. Examples avoid sizes 0/1, which torch.export specializes."""
    batch, seq = 2, min(3, spec.max_seq)
    ids = torch.zeros(batch, seq, dtype=torch.int64)
    batch_dim = torch.export.Dim("batch", min=1, max=max(2, spec.max_batch))
    seq_dim = torch.export.Dim("sequence", min=1, max=spec.max_seq)
    if spec.task is Task.SEQUENCE_CLASSIFICATION:
        return (ids,), ({0: batch_dim, 1: seq_dim},)
    past = torch.zeros(batch, dtype=torch.int64)
    shape = (batch, config.num_key_value_heads, spec.max_seq, config.head_dim)
    caches = tuple(torch.zeros(shape, dtype=dtype) for _ in range(2 * config.num_hidden_layers))
    lengths = (torch.full((batch,), seq, dtype=torch.int64),) if spec.logits is LogitsMode.LAST else ()
    args = (ids, past, *lengths, *caches)
    # Shaped like forward(input_ids, past_lengths, *rest): one spec per named argument, then one tuple for *rest.
    rest = tuple({0: batch_dim} for _ in (*lengths, *caches))
    return args, ({0: batch_dim, 1: seq_dim}, {0: batch_dim}, rest)


def rotary_table(config: LlamaConfig, spec: GraphSpec, dtype: torch.dtype):
    """(cos, sin) numpy (S_max, D/2) of every cache position, for a lowering that applies RoPE by table lookup.

    Computed from the config by the model's own rotary code (never from the traced model, whose tensors are
    fake), so the table holds exactly the values eager uses. None where no table fits: dynamic NTK (frequencies
    change with length) and bf16 (no NumPy dtype; ONNX Runtime's CPU GroupQueryAttention has no bf16 kernel either).
    """
    if config.rope_type == "dynamic" or dtype == torch.bfloat16:
        return None
    inv_freq, scaling = inverse_frequencies(config)
    positions = torch.arange(spec.max_seq)[None]  # (1, S_max)
    cos, sin = rotary_cos_sin(inv_freq, positions, scaling, dtype)
    return cos[0].numpy(), sin[0].numpy()


def fake_model(config: LlamaConfig, dtype: torch.dtype, model_class: type[nn.Module]) -> nn.Module:
    """`model_class(config)` with fake parameters in `dtype`: shapes and dtypes only, no memory, at any size.

    The rotary frequencies stay a real (tiny) buffer, computed from the config, so the optimizer folds what it
    folds from them exactly as with a real model. Tied parameters stay tied.
    """
    with torch.device("meta"):  # built on meta: its initializers would spend 0.15 s (SmolLM2) filling fake tensors
        model = model_class(config)
    with FakeTensorMode(allow_non_fake_inputs=True):
        converted: dict[int, nn.Parameter] = {}
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None:
                    if id(param) not in converted:
                        converted[id(param)] = nn.Parameter(torch.empty(param.shape, dtype=dtype), requires_grad=False)
                    module._parameters[name] = converted[id(param)]
    model.model.inv_freq = inverse_frequencies(config)[0]  # (D/2,) float32, real
    return model.eval()


@contextlib.contextmanager
def _quiet_torch_onnx():
    """torch.onnx prints its own progress and registry warnings; our progress bar says what stage we are in."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnx_ir", "onnxscript")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def graph_module(model: nn.Module, spec: GraphSpec) -> nn.Module:
    if spec.task is Task.SEQUENCE_CLASSIFICATION:
        return ClassifierGraph(model)
    return DecoderGraph(model, last_only=spec.logits is LogitsMode.LAST)


def target_table(config: LlamaConfig, spec: GraphSpec, dtype: torch.dtype) -> dict:
    """The plugin op's lowering for the target (with the rotary table where the `ort` lowering takes one)."""
    heads = Heads(config.num_attention_heads, config.num_key_value_heads, config.head_dim)
    return translation_table(spec.target, heads, rotary_table(config, spec, dtype) if spec.target is Target.ORT else None)


@dataclass
class TracedGraph:
    """The ONNX graph (weight initializers without values) and a source for each of its weights."""

    model: ir.Model
    sources: dict[str, WeightSource]


def _export(wrapper: nn.Module, config: LlamaConfig, spec: GraphSpec, dtype: torch.dtype, table: dict,
            optimize: bool = False) -> ir.Model:
    """torch.onnx.export; optimize=True only for a model with real weights (tests compare against that)."""
    args, dims = example_inputs(config, spec, dtype)
    with warnings.catch_warnings(), torch.no_grad(), _quiet_torch_onnx():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            args,
            dynamo=True,
            opset_version=ONNX_OPSET,
            custom_translation_table=table,
            dynamic_shapes=dims,
            input_names=input_names(config, spec),
            output_names=output_names(config, spec),
            optimize=optimize,  # False: optimized by _optimize, which knows the weights are absent
            verbose=False,
        )
    return program.model


def _optimize(model: ir.Model, sources: dict[str, WeightSource]) -> None:
    """torch.onnx's own optimization (onnxscript's optimizer, then its ONNX fusions), with the weights absent.

    The weights are fake, so their initializers get no value; the nodes the constant folder would fold onto them
    (Transposes of MatMul weights, Casts of fp16 norm weights) fold into their sources first, with its rules.
    """
    for name in sources:
        if name in model.graph.initializers:
            model.graph.initializers[name].const_value = None
    with _quiet_torch_onnx():
        ir.passes.common.InlinePass()(model)
        fold_weight_nodes(model.graph, sources)
        onnxscript.optimizer.optimize_ir(model)
        onnxscript.rewriter.onnx_fusions.fuse(model)
    for name in list(sources):
        if name not in model.graph.initializers:
            del sources[name]


@contextlib.contextmanager
def _first_layers(model: nn.Module, count: int):
    """`model` running its first `count` decoder layers only (their parameter names unchanged), until exit."""
    decoder = model.model
    layers = decoder.layers
    decoder.layers = nn.ModuleList(list(layers)[:count])
    try:
        yield
    finally:
        decoder.layers = layers


def _replicated(model: nn.Module, config: LlamaConfig, spec: GraphSpec, dtype: torch.dtype, table: dict,
                sources: dict[str, WeightSource]) -> ir.Model | None:
    """The graph traced with TRACED_LAYERS decoder layers and grown to all of them (exporter/replicate.py), or
    None where that is not safe: then the caller traces the whole model.

    torch.export's cost grows with the ops it traces: SmolLM2's 30 layers took 15.6 s of CPU of a 29.5 s export,
    3 layers take 4.5 s (with the exporter's one-time warm-up), and cloning the rest 0.1 s (cloning and the
    optimizer grow with depth, at ~0.04 s a layer). Every Llama layer is the same code (no per-layer config exists
    in LlamaConfig); the classifier builds its zero caches before the layers, one per layer, so it is traced whole.
    """
    if spec.task is not Task.CAUSAL_LM or config.num_hidden_layers <= TRACED_LAYERS:
        return None
    few = dataclasses.replace(config, num_hidden_layers=TRACED_LAYERS)
    with _first_layers(model, TRACED_LAYERS):
        onnx_model = _export(graph_module(model, spec), few, spec, dtype, table)
    try:
        replicate_layers(onnx_model, config.num_hidden_layers)
    except NotReplicable as error:
        logger.info("tracing all %d layers: %s", config.num_hidden_layers, error)
        return None
    graph = onnx_model.graph
    # Cloned weights have no value (the traced ones hold fake tensors): each must be one of the model's.
    unsourced = [name for name, v in graph.initializers.items() if v.const_value is None and name not in sources]
    missing = [name for name in sources if layer_of(name) is not None and name not in graph.initializers]
    if [v.name for v in graph.inputs] != input_names(config, spec) or \
            [v.name for v in graph.outputs] != output_names(config, spec) or unsourced or missing:
        logger.info("tracing all %d layers: the grown graph's inputs, outputs or weights are not the model's",
                    config.num_hidden_layers)
        return None
    return onnx_model


def trace_graph(model: nn.Module, config: LlamaConfig, spec: GraphSpec, dtype: torch.dtype,
                sources: dict[str, WeightSource], replicate: bool = True) -> TracedGraph:
    """Trace `model` (fake weights in `dtype`, attention routed through the plugin op) into an ONNX graph.

    `sources` (initializer name -> source) covers the model's parameters; the result's covers the graph's
    initializers that need one (folded ones included; unused ones dropped). replicate=False traces every layer
    (tests compare the two).
    """
    table = target_table(config, spec, dtype)
    onnx_model = _replicated(model, config, spec, dtype, table, sources) if replicate else None
    if onnx_model is None:
        onnx_model = _export(graph_module(model, spec), config, spec, dtype, table)
    sources = dict(sources)
    _optimize(onnx_model, sources)
    return TracedGraph(onnx_model, sources)


def write_graph(graph: TracedGraph, path: Path, target: str, progress=None) -> None:
    """Write `path` and its external data, reading each weight from its source when it is written.

    `progress(source)` is called before each weight is written (for a progress bar).
    """
    initializers = graph.model.graph.initializers
    for name, source in graph.sources.items():
        initializers[name].const_value = lazy_tensor(name, source)

    def callback(tensor, info) -> None:
        if progress is not None and tensor.name in graph.sources:
            progress(graph.sources[tensor.name])

    try:
        ir.save(graph.model, str(path), external_data=f"{path.name}.data", callback=callback)
    finally:
        for name in graph.sources:  # nothing keeps a reference to a lazy tensor's reader after writing
            initializers[name].const_value = None
    postprocess(path, target)
