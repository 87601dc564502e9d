"""`export`: checkpoint -> engine directory (model.onnx, tokenizer files, manifest.json), verified, atomically."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from llamaport.models import read_checkpoint
from llamaport.atomic import atomic_output_dir
from llamaport.errors import LlamaportError
from llamaport.models.llama import LlamaForCausalLM, LlamaForSequenceClassification
from llamaport.models.loaders.checkpoint import materialize
from llamaport.plugins.ops import use_plugin_attention
from llamaport.plugins.translations import TARGETS

from .graph import GraphSpec, trace_to_onnx
from .manifest import write_manifest
from .verify import Schedule, accuracy_dict, eager_logits, verify_graph

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


def release_weights(model: torch.nn.Module) -> None:
    """Free the weights' memory now, before verification loads the graph's own copy.

    torch's exporter keeps references to some of the traced module's tensors after export returns; emptying the
    storages frees that memory whoever holds the tensor objects (measured on SmolLM2: verification peaks at about
    1.6 copies of the weights, ONNX Runtime's included, instead of 1.8).
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        try:
            tensor.untyped_storage().resize_(0)
        except RuntimeError:  # storage borrowed from numpy or a mapped file: drop our reference at least
            tensor.data = torch.empty(0, dtype=tensor.dtype)


def export_engine(src: str | Path, out: str | Path, options: ExportOptions = ExportOptions()) -> dict:
    """Export SRC to the engine directory OUT; returns the manifest. Nothing is left at OUT on failure."""
    stages = ["load", "reference", "trace", "verify", "manifest"]
    with tqdm(total=len(stages), desc="export", unit="stage", leave=False) as bar:

        def stage(name: str) -> None:
            """Mark the previous stage done and show this one."""
            if bar.postfix:
                bar.update(1)
            bar.set_postfix_str(name)

        stage("load")
        checkpoint = read_checkpoint(src)
        checkpoint.require_weights()
        config = checkpoint.config
        check_options(options, config)
        with atomic_output_dir(out, options.overwrite) as tmp:
            expected = tokens = None
            schedule = Schedule.default(config, options.max_batch, options.max_seq, options.verify_steps)
            model = None
            stage("reference")
            if options.verify and options.task == "causal-lm":
                # The reference is always fp32 eager; computed first so fp16 exports never hold two models.
                model = materialize(checkpoint, torch.float32, LlamaForCausalLM)
                expected, tokens = eager_logits(model, schedule, options.max_seq)
                if options.dtype != "fp32":
                    model = None
                    gc.collect()
            stage("trace")
            if model is None:
                model = materialize(checkpoint, DTYPES[options.dtype], TASKS[options.task])
            use_plugin_attention(model)
            if options.task == "causal-lm":
                model.fuse_projections()
            spec = GraphSpec(options.target, options.max_seq, options.max_batch, options.logits, options.task)
            trace_to_onnx(model, config, spec, DTYPES[options.dtype], tmp / "model.onnx")
            release_weights(model)
            del model
            gc.collect()
            stage("verify")
            accuracy = None
            if expected is not None:
                result = verify_graph(tmp / "model.onnx", options.target, config, options.dtype, schedule, expected,
                                      tokens, options.max_seq)
                accuracy = accuracy_dict(result)
                if not result.passed:
                    raise LlamaportError(
                        f"export verification failed: max |logit diff| {result.max_abs_logit_diff:.3g} "
                        f"(tolerance {result.tolerance:g}), top-1 agreement {result.top1_agreement:.3f} against "
                        f"fp32 eager; nothing was written"
                    )
            stage("manifest")
            for name, content in checkpoint.tokenizer_files.items():
                (tmp / name).write_bytes(content)
            manifest = write_manifest(
                tmp, source=str(Path(src).resolve()), config=config.to_hf_dict(), target=options.target,
                task=options.task, dtype=options.dtype, max_seq=options.max_seq, max_batch=options.max_batch,
                logits=options.logits,
                tokenizer=checkpoint.tokenizer_kind, accuracy=accuracy,
            )
            bar.update(1)
    return manifest
