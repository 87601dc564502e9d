"""Run an exported graph against the eager model on a prefill plus decode steps, and measure the difference.

The schedule is a batch of right-padded prompts of different lengths, then `steps` single-token decode steps
whose tokens are the graph's greedy picks (fed to both, so one disagreement cannot snowball). The graph runs
first from the written files; the fp32 eager reference then runs layer by layer (exporter/reference.py), so
verification never holds the fp32 model.
`onnx`/`ort` graphs run in ONNX Runtime; `trt` graphs in `onnx.reference.ReferenceEvaluator` with the plugins'
NumPy kernels, since TensorRT itself is not needed to check the graph's semantics.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from llamaport.models import LlamaConfig
from llamaport.enginedir import (INPUT_IDS, INPUT_LENGTHS, LOGITS, PAST_LENGTHS, cache_names, present_for,
                                 thresholds)
from llamaport.errors import LlamaportError
from llamaport.models.loaders.checkpoint import Checkpoint

from .reference import layerwise_logits, schedule_steps

# Tolerances: the one threshold table, llamaport.enginedir.THRESHOLDS (verify_* fields), shared with `check`.
NP_DTYPES = {"fp32": np.float32, "fp16": np.float16}


@dataclass
class Accuracy:
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float
    steps: int
    batch: int
    backend: str
    tolerance: float
    passed: bool


@dataclass
class Schedule:
    prompts: list[list[int]]
    steps: int

    @staticmethod
    def default(config: LlamaConfig, max_batch: int, max_seq: int, steps: int = 4) -> "Schedule":
        rng = np.random.default_rng(0)
        lengths = [5, 3][: max(1, min(2, max_batch))]
        lengths = [min(n, max(1, max_seq - steps)) for n in lengths]
        return Schedule([rng.integers(0, config.vocab_size, n).tolist() for n in lengths], steps)


def _right_pad(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
    return ids, np.array([len(p) for p in prompts], dtype=np.int64)


def eager_logits(model, schedule: Schedule, max_seq: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per step: last-token logits (B, V) and the greedy tokens (B,) that the next step feeds."""
    ids, lengths = _right_pad(schedule.prompts)
    batch = len(schedule.prompts)
    cache = model.new_cache(batch, max_seq, dtype=torch.float32)
    past = torch.zeros(batch, dtype=torch.int64)
    logits_steps, tokens = [], []
    with torch.inference_mode():
        logits, cache = model(torch.from_numpy(ids), past, cache, last_only=True, input_lengths=torch.from_numpy(lengths))
        past = torch.from_numpy(lengths)
        for _ in range(schedule.steps + 1):
            step_logits = logits[:, -1].float().numpy()
            logits_steps.append(step_logits)
            tokens.append(step_logits.argmax(-1))
            if len(tokens) > schedule.steps:
                break
            logits, cache = model(torch.from_numpy(tokens[-1][:, None]), past, cache, last_only=True,
                                  input_lengths=torch.ones(batch, dtype=torch.int64))
            past = past + 1
    return logits_steps, tokens


def graph_logits(run: Callable[[dict], dict], config: LlamaConfig, schedule: Schedule, tokens: list[np.ndarray] | None,
                 max_seq: int, dtype: str) -> list[np.ndarray]:
    """The same schedule through a graph runner (feeds dict -> outputs dict by name).

    `tokens[step]` (B,) is fed after step `step`; None feeds the graph's own greedy picks (see `graph_greedy`).
    """
    return graph_greedy(run, config, schedule, max_seq, dtype, tokens)[0]


def graph_greedy(run: Callable[[dict], dict], config: LlamaConfig, schedule: Schedule, max_seq: int, dtype: str,
                 tokens: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per step: the graph's last-token logits (B, V), and the tokens (B,) fed after each step but the last."""
    ids, lengths = _right_pad(schedule.prompts)
    batch = len(schedule.prompts)
    shape = (batch, config.num_key_value_heads, max_seq, config.head_dim)
    caches = cache_names(config.num_hidden_layers)
    feeds = {INPUT_IDS: ids, PAST_LENGTHS: np.zeros(batch, np.int64), INPUT_LENGTHS: lengths,
             **{name: np.zeros(shape, NP_DTYPES[dtype]) for name in caches}}
    results, fed = [], []
    for step in range(schedule.steps + 1):
        outputs = run(feeds)
        results.append(np.asarray(outputs[LOGITS])[:, -1].astype(np.float32))
        if step == schedule.steps:
            break
        fed.append(results[-1].argmax(-1) if tokens is None else tokens[step])
        feeds[PAST_LENGTHS] = feeds[PAST_LENGTHS] + feeds[INPUT_LENGTHS]
        feeds[INPUT_IDS] = fed[-1][:, None].astype(np.int64)
        feeds[INPUT_LENGTHS] = np.ones(batch, np.int64)
        for name in caches:
            feeds[name] = outputs[present_for(name)]
    return results, fed


def onnxruntime_runner(path: Path) -> Callable[[dict], dict]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # TensorScatter warns when it cannot work in place; plain run() never can
    # Prepacked MatMul weights are a second copy of the model; a few verification steps do not need the speed.
    options.add_session_config_entry("session.disable_prepacking", "1")
    # Without the arena, each step's temporaries go back to the system when freed instead of staying reserved.
    options.enable_cpu_mem_arena = False
    # An fp16 graph on the CPU costs ONNX Runtime an fp32 copy of every weight (no fp16 MatMul here): 2x the
    # engine. Measured on a 2.2 GB TinyLlama-shaped engine: 4.4 GB at every optimization level (the basic level
    # keeps the fp16 file mapped and casts at run time, which peaks higher still: 6 GB).
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return lambda feeds: dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted})))


def reference_runner(path: Path) -> Callable[[dict], dict]:
    import onnx
    from onnx.reference import ReferenceEvaluator

    from llamaport.plugins.reference_numpy import REFERENCE_OPS
    from llamaport.plugins.reference_trt_native import REFERENCE_OPS as TRT_NATIVE_OPS

    evaluator = ReferenceEvaluator(onnx.load(str(path)), new_ops=[*REFERENCE_OPS, *TRT_NATIVE_OPS])
    names = evaluator.output_names
    wanted = set(evaluator.input_names)
    return lambda feeds: dict(zip(names, evaluator.run(None, {k: v for k, v in feeds.items() if k in wanted})))


def compare(expected: list[np.ndarray], got: list[np.ndarray], dtype: str, backend: str,
            quantization: dict | None = None) -> Accuracy:
    diffs = [np.abs(e - g) for e, g in zip(expected, got)]
    agree = [float(np.mean(e.argmax(-1) == g.argmax(-1))) for e, g in zip(expected, got)]
    max_diff = float(max(d.max() for d in diffs))
    if not np.isfinite(max_diff):
        max_diff = float("inf")
    bounds = thresholds(dtype, quantization)
    tolerance = bounds.verify_tolerance(float(max(np.abs(e).max() for e in expected)))
    top1 = float(np.mean(agree))
    passed = max_diff <= tolerance and top1 >= bounds.verify_min_top1_agreement
    return Accuracy(max_diff, float(np.mean([d.mean() for d in diffs])), top1, len(expected) - 1,
                    expected[0].shape[0], backend, tolerance, passed)


def verify_export(path: Path, target: str, checkpoint: Checkpoint, dtype: str, schedule: Schedule, max_seq: int,
                  progress: Callable[[str], None] | None = None, quantization: dict | None = None) -> Accuracy:
    """Run the written graph over the schedule, then the fp32 eager reference layer by layer, and compare.

    The graph runs first and alone (one copy of the weights: the engine's), feeding its own greedy tokens; its
    session is closed before the reference loads its first layer. The reference is fed the same tokens (teacher
    forcing), so both see identical inputs at every step. `progress(stage)` after the graph and after each layer.
    """
    if dtype not in NP_DTYPES:
        raise LlamaportError(f"--dtype {dtype}: ONNX Runtime on the CPU cannot run it to verify; pass --skip-verify")
    config = checkpoint.config
    from llamaport.plugins.translations import REFERENCE_TARGETS

    reference = target in REFERENCE_TARGETS  # TensorRT graphs: their custom ops run as NumPy kernels
    backend = "onnx-reference" if reference else "onnxruntime"
    run = reference_runner(path) if reference else onnxruntime_runner(path)
    got, tokens = graph_greedy(run, config, schedule, max_seq, dtype)
    del run
    gc.collect()
    if progress is not None:
        progress("graph")
    expected = layerwise_logits(checkpoint, schedule_steps(schedule.prompts, tokens), max_seq,
                                None if progress is None else lambda: progress("reference"))
    return compare(expected, got, dtype, backend, quantization)


def accuracy_dict(accuracy: Accuracy) -> dict:
    return asdict(accuracy)
