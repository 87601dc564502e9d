"""`export`: checkpoint -> engine directory (model.onnx, tokenizer files, manifest.json), verified, atomically."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from llamaport.atomic import atomic_output_dir
from llamaport.errors import LlamaportError
from llamaport.models import read_checkpoint
from llamaport.models.llama import LlamaForCausalLM, LlamaForSequenceClassification
from llamaport.plugins.ops import use_plugin_attention
from llamaport.plugins.translations import TARGETS

from .graph import GraphSpec, fake_model, trace_graph, write_graph
from .manifest import write_manifest
from .verify import Schedule, accuracy_dict, verify_export
from .weights import parameter_sources

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TASKS = {"causal-lm": LlamaForCausalLM, "sequence-classification": LlamaForSequenceClassification}


@dataclass(frozen=True)
class ExportOptions:
    target: str = "onnx"
    dtype: str = "fp32"
    max_seq: int = 4096
    max_batch: int = 1
    logits: str = "last"
    task: str = "causal-lm"
    verify: bool = True
    verify_steps: int = 4
    overwrite: bool = False
    quiet: bool = False  # no progress bars


def check_options(options: ExportOptions, config) -> None:
    if options.target not in TARGETS:
        raise LlamaportError(f"--target {options.target!r} does not exist; use one of {', '.join(TARGETS)}")
    if options.dtype not in DTYPES:
        raise LlamaportError(f"--dtype {options.dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if options.task not in TASKS:
        raise LlamaportError(f"--task {options.task!r} is not supported; use one of {', '.join(TASKS)}")
    if options.max_batch < 1:
        raise LlamaportError("--max-batch must be at least 1")
    if options.max_seq < 2:
        raise LlamaportError("--max-seq must be at least 2")
    limit = config.max_supported_positions()
    if options.max_seq > limit:
        hint = "" if config.rope_scaling else " and has no rope_scaling to extend it"
        raise LlamaportError(
            f"--max-seq {options.max_seq} exceeds the {limit} positions this model supports{hint}; "
            f"use --max-seq {limit} or less"
        )


class _Progress:
    """One tqdm bar per stage that loops over layers ("write weights", "verify"); silent when quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def bar(self, desc: str, total: int) -> tqdm:
        return tqdm(total=total, desc=desc, unit="layer", leave=False, disable=self.quiet)


def _write(traced, path: Path, target: str, layers: int, progress: _Progress) -> None:
    """Stream the weights into path's external data, advancing a bar as each layer's weights go in."""
    with progress.bar("write weights", layers) as bar:

        def advance(source) -> None:
            if source.layer is not None and source.layer + 1 > bar.n:
                bar.update(source.layer + 1 - bar.n)

        write_graph(traced, path, target, advance)
        bar.update(bar.total - bar.n)


def _verify(path: Path, options: ExportOptions, checkpoint, schedule: Schedule, progress: _Progress) -> dict:
    with progress.bar("verify", checkpoint.config.num_hidden_layers + 1) as bar:
        result = verify_export(path, options.target, checkpoint, options.dtype, schedule, options.max_seq,
                               lambda stage: (bar.set_postfix_str(stage), bar.update(1)))
    if not result.passed:
        raise LlamaportError(
            f"export verification failed: max |logit diff| {result.max_abs_logit_diff:.3g} "
            f"(tolerance {result.tolerance:g}), top-1 agreement {result.top1_agreement:.3f} against "
            f"fp32 eager; nothing was written"
        )
    return accuracy_dict(result)


def export_engine(src: str | Path, out: str | Path, options: ExportOptions = ExportOptions()) -> dict:
    """Export SRC to the engine directory OUT; returns the manifest. Nothing is left at OUT on failure.

    Memory grows with one layer, not the model: the graph is traced with fake weights, each weight is read from
    the checkpoint as it is written, and verification runs the written graph, then the eager reference layer by
    layer (exporter/weights.py, exporter/reference.py).
    """
    progress = _Progress(options.quiet)
    checkpoint = read_checkpoint(src)
    checkpoint.require_weights()
    config = checkpoint.config
    check_options(options, config)
    with atomic_output_dir(out, options.overwrite) as tmp:
        model = fake_model(config, DTYPES[options.dtype], TASKS[options.task])
        use_plugin_attention(model)
        if options.task == "causal-lm":
            model.fuse_projections()
        spec = GraphSpec(options.target, options.max_seq, options.max_batch, options.logits, options.task)
        traced = trace_graph(model, config, spec, DTYPES[options.dtype], parameter_sources(checkpoint, model))
        del model
        _write(traced, tmp / "model.onnx", options.target, config.num_hidden_layers, progress)
        del traced
        gc.collect()
        accuracy = None
        if options.verify and options.task == "causal-lm":
            schedule = Schedule.default(config, options.max_batch, options.max_seq, options.verify_steps)
            accuracy = _verify(tmp / "model.onnx", options, checkpoint, schedule, progress)
        for name, content in checkpoint.tokenizer_files.items():
            (tmp / name).write_bytes(content)
        manifest = write_manifest(
            tmp, source=str(Path(src).resolve()), config=config.to_hf_dict(), target=options.target,
            task=options.task, dtype=options.dtype, max_seq=options.max_seq, max_batch=options.max_batch,
            logits=options.logits, tokenizer=checkpoint.tokenizer_kind, accuracy=accuracy,
        )
    return manifest
