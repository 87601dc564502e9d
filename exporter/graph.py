"""Trace the eager Llama with its static KV cache into one ONNX graph that serves prefill and decode.

Inputs:  input_ids (B, S) int64, past_lengths (B,) int64, input_lengths (B,) int64 (real tokens per row of a
         right-padded call; logits are taken at input_lengths - 1), past.{i}.key / past.{i}.value (B, H_kv, S_max, D).
Outputs: logits (B, 1, V) float32 (or (B, S, V) with logits="all"), present.{i}.key / present.{i}.value.
A runtime binds present.{i}.* to the same buffers as past.{i}.*, so the cache is updated in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llamaport.models import LlamaConfig
from llamaport.models.rope import rotary_cos_sin
from llamaport.plugins.translations import ONNX_OPSET, Heads, translation_table

from .fusions import postprocess

CLASSIFIER_INPUTS = ["input_ids"]


@dataclass(frozen=True)
class GraphSpec:
    target: str  # onnx | ort | trt
    max_seq: int  # cache capacity S_max
    max_batch: int
    logits: str = "last"  # last | all
    task: str = "causal-lm"  # causal-lm | sequence-classification


def cache_names(config: LlamaConfig, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(config.num_hidden_layers) for kind in ("key", "value")]


def input_names(config: LlamaConfig, spec: GraphSpec) -> list[str]:
    if spec.task == "sequence-classification":
        return list(CLASSIFIER_INPUTS)
    lengths = ["input_lengths"] if spec.logits == "last" else []
    return ["input_ids", "past_lengths", *lengths, *cache_names(config, "past")]


def output_names(config: LlamaConfig, spec: GraphSpec) -> list[str]:
    if spec.task == "sequence-classification":
        return ["logits"]
    return ["logits", *cache_names(config, "present")]


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
    if spec.task == "sequence-classification":
        return (ids,), ({0: batch_dim, 1: seq_dim},)
    past = torch.zeros(batch, dtype=torch.int64)
    shape = (batch, config.num_key_value_heads, spec.max_seq, config.head_dim)
    caches = tuple(torch.zeros(shape, dtype=dtype) for _ in range(2 * config.num_hidden_layers))
    lengths = (torch.full((batch,), seq, dtype=torch.int64),) if spec.logits == "last" else ()
    args = (ids, past, *lengths, *caches)
    # Shaped like forward(input_ids, past_lengths, *rest): one spec per named argument, then one tuple for *rest.
    rest = tuple({0: batch_dim} for _ in (*lengths, *caches))
    return args, ({0: batch_dim, 1: seq_dim}, {0: batch_dim}, rest)


def rotary_table(model: nn.Module, config: LlamaConfig, spec: GraphSpec, dtype: torch.dtype):
    """(cos, sin) numpy (S_max, D/2) of every cache position, for a lowering that applies RoPE by table lookup.

    Computed by the model's own rotary code, so the table holds exactly the values eager uses. None where no
    table fits: dynamic NTK (frequencies change with length) and bf16 (no NumPy dtype; ONNX Runtime's CPU
    GroupQueryAttention has no bf16 kernel either).
    """
    if config.rope_type == "dynamic" or dtype == torch.bfloat16:
        return None
    positions = torch.arange(spec.max_seq)[None]  # (1, S_max)
    cos, sin = rotary_cos_sin(model.model.inv_freq, positions, model.model.attention_scaling, dtype)
    return cos[0].numpy(), sin[0].numpy()


@contextlib.contextmanager
def _quiet_torch_onnx():
    """torch.onnx prints its own progress and registry warnings; our progress bar says what stage we are in."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def trace_to_onnx(model: nn.Module, config: LlamaConfig, spec: GraphSpec, dtype: torch.dtype, path: Path) -> None:
    """Export `model` (already in `dtype`, attention routed through the plugin op) to `path` (+ external data)."""
    if spec.task == "sequence-classification":
        wrapper: nn.Module = ClassifierGraph(model)
    else:
        wrapper = DecoderGraph(model, last_only=spec.logits == "last")
    heads = Heads(config.num_attention_heads, config.num_key_value_heads, config.head_dim)
    table = translation_table(spec.target, heads, rotary_table(model, config, spec, dtype) if spec.target == "ort" else None)
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
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=True)
    postprocess(path, spec.target)
