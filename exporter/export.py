"""`export`: checkpoint -> engine directory (model.onnx, tokenizer files, manifest.json), verified, atomically."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from llamaport.atomic import atomic_output_dir
from llamaport.enginedir import GRAPH, DType, LogitsMode, Manifest, Target, Task, parse, save_manifest
from llamaport.errors import LlamaportError
from llamaport.export_options import check_export_options
from llamaport.models import read_checkpoint
from llamaport.models.llama import LlamaForCausalLM, LlamaForSequenceClassification
from llamaport.plugins.ops import use_plugin_attention

from .graph import GraphSpec, fake_model, trace_graph, write_graph
from .manifest import draft_manifest
from .quant import QuantSpec
from .verify import Schedule, accuracy_dict, verify_export
from .weights import parameter_sources

DTYPES = {DType.FP32: torch.float32, DType.FP16: torch.float16, DType.BF16: torch.bfloat16}
TASKS = {Task.CAUSAL_LM: LlamaForCausalLM, Task.SEQUENCE_CLASSIFICATION: LlamaForSequenceClassification}


@dataclass(frozen=True)
class ExportOptions:
    """What to export. Names are llamaport.enginedir's typed names (their spellings work too: "ort" is Target.ORT)."""

    target: Target | str = Target.ONNX
    dtype: DType | str = DType.FP32
    max_seq: int = 4096
    max_batch: int = 1
    logits: LogitsMode | str = LogitsMode.LAST
    task: Task | str = Task.CAUSAL_LM
    verify: bool = True
    verify_steps: int = 4
    overwrite: bool = False
    quiet: bool = False  # no progress bars
    quant: QuantSpec | None = None  # weight-only int4 (exporter/quant.py); None keeps the weights in `dtype`


def resolve_options(options: ExportOptions) -> ExportOptions:
    """The options with every name parsed to its typed value, so the rest of the export compares enums."""
    return dataclasses.replace(
        options, target=parse(Target, options.target, "--target"), dtype=parse(DType, options.dtype, "--dtype"),
        logits=parse(LogitsMode, options.logits, "--logits"), task=parse(Task, options.task, "--task"),
    )


def check_options(options: ExportOptions, config) -> None:
    """What needs the model's config: the cache must fit the positions the model supports."""
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


def _verify(folder: Path, draft: Manifest, checkpoint, schedule: Schedule, progress: _Progress) -> dict:
    """Engine vs eager; for a quantized engine the eager model runs the same dequantized weights (`checkpoint`)."""
    with progress.bar("verify", checkpoint.config.num_hidden_layers + 1) as bar:
        result = verify_export(folder, draft, checkpoint, schedule,
                               lambda stage: (bar.set_postfix_str(stage), bar.update(1)))
    if not result.passed:
        raise LlamaportError(
            f"export verification failed: max |logit diff| {result.max_abs_logit_diff:.3g} "
            f"(tolerance {result.tolerance:g}), top-1 agreement {result.top1_agreement:.3f} against "
            f"{'its dequantized ' if draft.quantization else 'fp32 '}eager reference; nothing was written"
        )
    return accuracy_dict(result)


def _quality(checkpoint, dequantized, progress: _Progress) -> dict:
    """The int4 weights against the checkpoint's own (perplexity, KL, top-1), eager, layer by layer."""
    from .quant_quality import text_ids, weight_quality

    with progress.bar("quality", 2 * checkpoint.config.num_hidden_layers) as bar:
        return weight_quality(checkpoint, dequantized, text_ids(checkpoint.tokenizer_files), lambda: bar.update(1))


def export_engine(src: str | Path, out: str | Path, options: ExportOptions = ExportOptions()) -> dict:
    """Export SRC to the engine directory OUT; returns the manifest. Nothing is left at OUT on failure.

    Memory grows with one layer, not the model: the graph is traced with fake weights, each weight is read from
    the checkpoint as it is written, and verification runs the written graph, then the eager reference layer by
    layer (exporter/weights.py, exporter/reference.py).
    """
    check_export_options(src, options)  # cheap checks before any weight is read
    options = resolve_options(options)
    if options.verify and options.task is Task.CAUSAL_LM and options.dtype is DType.BF16:
        # Refused before minutes of tracing and writing: NumPy has no bf16, and ONNX Runtime's CPU kernels none.
        raise LlamaportError("--dtype bf16: ONNX Runtime on the CPU cannot run it to verify; pass --skip-verify "
                             "(and check the engine on the GPU it is built for)")
    if options.quant is not None and options.task is not Task.CAUSAL_LM:
        raise LlamaportError(f"--quant int4 quantizes causal-lm engines only; drop --quant for --task {options.task}")
    progress = _Progress(options.quiet)
    checkpoint = read_checkpoint(src)
    checkpoint.require_weights()
    config = checkpoint.config
    check_options(options, config)
    with atomic_output_dir(out, options.overwrite, sources=[src]) as tmp:
        model = fake_model(config, DTYPES[options.dtype], TASKS[options.task])
        use_plugin_attention(model)
        if options.task is Task.CAUSAL_LM:
            model.fuse_projections()
        spec = GraphSpec(options.target, options.max_seq, options.max_batch, options.logits, options.task)
        traced = trace_graph(model, config, spec, DTYPES[options.dtype], parameter_sources(checkpoint, model))
        del model
        quantization, reference = None, checkpoint
        if options.quant is not None:
            from .quant_export import DequantizedCheckpoint, quantize_for_export

            _, codes, quantization = quantize_for_export(traced, options.quant, options.target,
                                                         DTYPES[options.dtype], checkpoint)
            reference = DequantizedCheckpoint(checkpoint, codes)
        _write(traced, tmp / GRAPH, options.target, config.num_hidden_layers, progress)
        del traced
        for name, content in checkpoint.tokenizer_files.items():
            (tmp / name).write_bytes(content)
        draft = draft_manifest(
            tmp, source=str(Path(src).resolve()), config=config.to_hf_dict(), target=options.target,
            task=options.task, dtype=options.dtype, max_seq=options.max_seq, max_batch=options.max_batch,
            logits=options.logits, tokenizer=checkpoint.tokenizer_kind, quantization=quantization,
        )
        accuracy = None
        if options.verify and options.task is Task.CAUSAL_LM:
            schedule = Schedule.default(config, options.max_batch, options.max_seq, options.verify_steps)
            accuracy = _verify(tmp, draft, reference, schedule, progress)
            if quantization is not None:
                quantization = {**quantization, "quality": _quality(checkpoint, reference, progress)}
        updates = {"quantization": quantization} if quantization else {}  # no key at all for float engines
        manifest = save_manifest(draft, verification=accuracy, **updates)
    return manifest
