"""Run an exported engine against the eager model on a prefill plus decode steps, and measure the difference.

The schedule is a batch of right-padded prompts of different lengths, then `steps` single-token decode steps
whose tokens are the engine's greedy picks (fed to both, so one disagreement cannot snowball). The engine runs
first, through the runtime's own backend and generation loop (`open_graph`, `graph_greedy`), from the written
files; the fp32 eager reference then runs layer by layer (exporter/reference.py), so verification never holds
the fp32 model. `onnx`/`ort` engines run in ONNX Runtime with one copy of the weights (the backend's low-memory
session); TensorRT targets run in `onnx.reference.ReferenceEvaluator` with the plugins' NumPy kernels, since
TensorRT itself is not needed to check the graph's semantics.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from llamaport.enginedir import (GRAPH, INPUT_IDS, INPUT_LENGTHS, LOGITS, PAST_LENGTHS, BackendName, DType,
                                 LogitsMode, Manifest, cache_names, present_for, thresholds)
from llamaport.errors import LlamaportError
from llamaport.models import LlamaConfig
from llamaport.models.loaders.checkpoint import Checkpoint
from llamaport.runtime.backends import Backend, open_backend
from llamaport.runtime.generate import Generation
from llamaport.runtime.sampling import SamplingParams

from .reference import layerwise_logits, schedule_steps

# Tolerances: the one threshold table, llamaport.enginedir.THRESHOLDS (verify_* fields), shared with `check`.


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


class ReferenceEvaluatorBackend:
    """A TensorRT-target engine's graph run by `onnx.reference` with the plugins' NumPy kernels, behind the
    runtime's Backend interface (reset/forward); the caches go through the graph's feeds and outputs."""

    name = "onnx-reference"

    def __init__(self, folder: Path, manifest: Manifest):
        import onnx
        from onnx.reference import ReferenceEvaluator

        from llamaport.plugins.reference_numpy import REFERENCE_OPS
        from llamaport.plugins.reference_trt_native import REFERENCE_OPS as TRT_NATIVE_OPS

        self.evaluator = ReferenceEvaluator(onnx.load(str(folder / GRAPH)), new_ops=[*REFERENCE_OPS, *TRT_NATIVE_OPS])
        self.manifest, self.max_seq, self.max_batch = manifest, manifest.max_seq, manifest.max_batch
        self.caches: dict[str, np.ndarray] = {}

    def reset(self, batch: int) -> None:
        m = self.manifest
        shape = (batch, m.num_key_value_heads, m.max_seq, m.head_dim)  # (B, H_kv, S_max, D)
        self.caches = {name: np.zeros(shape, m.dtype.numpy_name) for name in cache_names(m.num_layers)}

    def forward(self, input_ids: np.ndarray, past_lengths: np.ndarray, input_lengths: np.ndarray) -> np.ndarray:
        feeds = {INPUT_IDS: input_ids, PAST_LENGTHS: past_lengths, INPUT_LENGTHS: input_lengths, **self.caches}
        wanted = set(self.evaluator.input_names)
        outputs = dict(zip(self.evaluator.output_names,
                           self.evaluator.run(None, {k: v for k, v in feeds.items() if k in wanted})))
        self.caches = {name: outputs[present_for(name)] for name in self.caches}
        logits = np.asarray(outputs[LOGITS], dtype=np.float32)  # (B, 1, V), or (B, S, V) for --logits all
        if self.manifest.logits is LogitsMode.ALL:
            return logits[np.arange(len(input_lengths)), np.asarray(input_lengths) - 1]
        return logits[:, -1]


def open_graph(folder: Path, manifest: Manifest) -> Backend:
    """The engine at `folder` behind the runtime's Backend interface, as verification runs it."""
    from llamaport.plugins.translations import REFERENCE_TARGETS

    if manifest.target in REFERENCE_TARGETS:
        return ReferenceEvaluatorBackend(folder, manifest)
    return open_backend(folder, manifest, BackendName.ONNXRUNTIME, low_memory=True)


class _Recorder:
    """A backend that keeps a copy of every forward's last-token logits (B, V)."""

    def __init__(self, backend: Backend):
        self.backend, self.logits = backend, []
        self.name, self.max_seq, self.max_batch = backend.name, backend.max_seq, backend.max_batch

    def reset(self, batch: int) -> None:
        self.backend.reset(batch)

    def forward(self, input_ids, past_lengths, input_lengths) -> np.ndarray:
        logits = self.backend.forward(input_ids, past_lengths, input_lengths)
        self.logits.append(np.array(logits, dtype=np.float32))  # backends reuse their output buffer
        return logits


def graph_greedy(backend: Backend, schedule: Schedule) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The runtime's greedy generation over the schedule: per step the logits (B, V), and the tokens (B,) fed
    after each step but the last."""
    recorder = _Recorder(backend)
    params = SamplingParams(max_new_tokens=schedule.steps + 1, ignore_eos=True)
    fed = [np.array(tokens, dtype=np.int64) for tokens in Generation(recorder, schedule.prompts, params, eos_ids=[])]
    return recorder.logits, fed[: schedule.steps]


def graph_logits(backend: Backend, schedule: Schedule, tokens: list[np.ndarray]) -> list[np.ndarray]:
    """The schedule through `backend` with `tokens[step]` (B,) fed after each step (teacher forcing)."""
    ids, lengths = _right_pad(schedule.prompts)
    backend.reset(len(lengths))
    results = [np.array(backend.forward(ids, np.zeros_like(lengths), lengths), dtype=np.float32)]
    past, ones = lengths.copy(), np.ones_like(lengths)
    for token in tokens[: schedule.steps]:
        results.append(np.array(backend.forward(np.asarray(token, np.int64)[:, None], past, ones), dtype=np.float32))
        past = past + 1
    return results


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


def verify_export(folder: Path, manifest: Manifest, checkpoint: Checkpoint, schedule: Schedule,
                  progress: Callable[[str], None] | None = None) -> Accuracy:
    """Run the engine at `folder` (described by `manifest`, written or draft) over the schedule, then the fp32 eager
    reference layer by layer, and compare.

    The engine runs first and alone (one copy of the weights: the engine's), feeding its own greedy tokens; it is
    closed before the reference loads its first layer. The reference is fed the same tokens (teacher forcing), so
    both see identical inputs at every step. `progress(stage)` after the engine and after each layer.
    """
    if manifest.dtype not in (DType.FP32, DType.FP16):
        raise LlamaportError(f"--dtype {manifest.dtype}: ONNX Runtime on the CPU cannot run it to verify; pass "
                             "--skip-verify")
    backend = open_graph(folder, manifest)
    name = backend.name
    got, tokens = graph_greedy(backend, schedule)
    cyclic = isinstance(backend, ReferenceEvaluatorBackend)
    del backend  # ONNX Runtime's session, and with it the engine's weights, goes here
    if cyclic:
        # onnx.reference's evaluator holds reference cycles (655 MB of SmolLM2 fp32 weights). A full collection
        # costs ~0.3 s of a SmolLM2 export, so it runs only where it frees something.
        gc.collect()
    if progress is not None:
        progress("graph")
    expected = layerwise_logits(checkpoint, schedule_steps(schedule.prompts, tokens),
                                None if progress is None else lambda: progress("reference"))
    return compare(expected, got, manifest.dtype, name, manifest.quantization)


def accuracy_dict(accuracy: Accuracy) -> dict:
    return asdict(accuracy)
