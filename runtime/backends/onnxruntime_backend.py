"""ONNX Runtime backend with IO binding: every present.{i}.* output is bound to the buffer of past.{i}.*, so
TensorScatter / GroupQueryAttention update the cache in place. Nothing is copied or re-allocated per token
except the small id/length inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from llamaport.enginedir import GRAPH, REFETCH, DType, EngineDirError, LogitsMode, Manifest, Target, TensorSpec
from llamaport.enginedir import INPUT_IDS, INPUT_LENGTHS, LOGITS, PAST_LENGTHS, check_graph_signature, is_past_name
from llamaport.enginedir import present_for
from llamaport.errors import LlamaportError

from . import hugepages

_NP = {"float32": np.float32, "float16": np.float16}
# ONNX Runtime's type strings, spelled as the manifest spells dtypes.
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
              "tensor(int64)": "int64", "tensor(int32)": "int32"}


def _signature(args) -> list[TensorSpec]:
    """Declared inputs or outputs of a session; unnamed dynamic dims (None) read as "?"."""
    return [TensorSpec(a.name, tuple("?" if d is None else d for d in a.shape), _ORT_TYPES.get(a.type, a.type))
            for a in args]


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def _low_memory(ort, options) -> None:
    """Session options that keep ONNX Runtime at one copy of the weights, for export verification (a few steps).

    The CPU has no fp16 MatMul, so ONNX Runtime casts fp16 weights to fp32. Its constant folder would fold those
    casts into an fp32 copy of every weight (2x the engine; 4.4 GB for a 2.2 GB fp16 TinyLlama-shaped engine), so
    it is off; priority-based order then casts each weight just before its MatMul, and without the arena the
    cast is freed after it (one fp32 weight alive at a time).

    The other optimizers up to the extended level stay on: they copy no weight and fold what runs per step, such
    as the tied head's Transpose (MatMul + Transpose -> FusedMatMul: the five steps of SmolLM2 fp32's export
    verification 0.59 -> 0.19 s, peak RSS 0.97 -> 0.86 GB) and, on `--target onnx` int4 graphs, DequantizeLinear +
    MatMul -> MatMulNBits (1.1B shape: 52 -> 20 s, 3.11 -> 1.41 GB; its float dequantized weights were the copies).
    The level above adds fp16 -> fp32 initializer copies (1.1B fp16: 2.65 -> 4.76 GB).

    No prepacked copies either, int4 included. Prepacked, MatMulNBits would run its own kernels (the 1.1B int4
    shape's five steps 20 s -> 0.2 s + 1.3 s of packing, its logits the runtime's bit for bit), but in this session
    (ONNX Runtime 1.32) the 13B shape's verification then failed (max |logit diff| 8.97, top-1 0.000, peak 8.59 GB),
    and `--target onnx` int4 graphs came out all zero logits. Unpacked, MatMulNBits dequantizes in fp32 each call.
    """
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.add_session_config_entry("optimization.disable_specified_optimizers", "ConstantFolding")
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.enable_cpu_mem_arena = False


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, folder: Path, manifest: Manifest, device: str = "cpu", threads: int | None = None,
                 low_memory: bool = False):
        """`low_memory`: hold one copy of the weights (the engine file's), at the cost of speed (see _low_memory)."""
        import onnxruntime as ort

        if manifest.target.is_tensorrt:
            raise LlamaportError(f"{folder} was exported for TensorRT (--target {manifest.target}); build it with "
                                 "'llamaport build' and use backend='tensorrt'")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or physical_cores()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if low_memory:
            _low_memory(ort, options)
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise LlamaportError("device 'cuda' needs onnxruntime-gpu (pip install onnxruntime-gpu)")
            if manifest.target is Target.ORT and manifest.dtype is DType.FP32:
                # ONNX Runtime's CUDA GroupQueryAttention has fp16/bf16 kernels only; fp32 would fall back to the
                # CPU node by node, copying the whole cache across every step.
                raise LlamaportError(f"{folder} is an fp32 --target ort engine, which ONNX Runtime cannot run on "
                                     "CUDA; re-export it with --dtype fp16 for device 'cuda'")
            providers.insert(0, "CUDAExecutionProvider")
        self.ort, self.device, self.low_memory = ort, device, low_memory
        before = hugepages.anonymous_ranges() if device == "cpu" and not low_memory else []
        try:
            self.session = ort.InferenceSession(str(folder / GRAPH), options, providers=providers)
        except Exception as e:  # onnxruntime's own exception types (Fail, InvalidGraph, ...) share no base class
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise EngineDirError(f"{folder / GRAPH}: ONNX Runtime cannot load it ({reason}); {REFETCH}") from None
        # The prepacked weights onto 2 MiB pages: decode streams them all each step (1.1B int4: +7-20% decode
        # tok/s for 0.15-1.5 s at load; numbers in hugepages.py). Skipped for low_memory's few verification steps.
        hugepages.collapse_new(before)
        check_graph_signature(manifest, _signature(self.session.get_inputs()), _signature(self.session.get_outputs()))
        self.manifest = manifest
        self.max_seq, self.max_batch = manifest.max_seq, manifest.max_batch
        self.all_logits = manifest.logits is LogitsMode.ALL
        cache_inputs = [i for i in manifest.inputs if is_past_name(i.name)]
        self.cache_names = [i.name for i in cache_inputs]
        self.cache_dtype = _NP[cache_inputs[0].dtype]
        self.cache_shape = tuple(cache_inputs[0].shape[1:])  # (H_kv, S_max, D)
        self.vocab_size = manifest.vocab_size
        self.batch = None

    def reset(self, batch: int) -> None:
        if batch > self.max_batch:
            raise LlamaportError(f"batch {batch} exceeds this engine's --max-batch {self.max_batch}; re-export with a larger one")
        if batch == self.batch:
            return  # stale cache entries are never read: attention stops at each row's length
        ort, device = self.ort, self.device
        self.caches = {}
        self.binding = self.session.io_binding()
        for name in self.cache_names:
            # Zeroed once, so never-written slots are finite numbers (masked, but NaN * 0 would still be NaN).
            shape = (batch, *self.cache_shape)  # (B, H_kv, S_max, D)
            # A few verification steps (low_memory): only the pages they write become resident.
            zeros = hugepages.small_page_zeros(shape, self.cache_dtype) if self.low_memory else np.zeros(shape, self.cache_dtype)
            value = ort.OrtValue.ortvalue_from_numpy(zeros, device, 0)
            self.caches[name] = value
            self.binding.bind_ortvalue_input(name, value)
            self.binding.bind_ortvalue_output(present_for(name), value)
        if not self.all_logits:
            self.logits = np.zeros((batch, 1, self.vocab_size), np.float32)
            self.binding.bind_output(LOGITS, "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data)
        else:
            self.binding.bind_output(LOGITS, "cpu")
        self.batch = batch

    def forward(self, input_ids, past_lengths, input_lengths, all_positions: bool = False) -> np.ndarray:
        b = self.binding
        b.bind_cpu_input(INPUT_IDS, np.ascontiguousarray(input_ids, dtype=np.int64))
        b.bind_cpu_input(PAST_LENGTHS, np.ascontiguousarray(past_lengths, dtype=np.int64))
        if not self.all_logits:
            b.bind_cpu_input(INPUT_LENGTHS, np.ascontiguousarray(input_lengths, dtype=np.int64))
        self.session.run_with_iobinding(b)
        if not self.all_logits:
            return self.logits[:, -1]
        logits = b.get_outputs()[0].numpy()  # (B, S, V)
        if all_positions:
            return logits
        return logits[np.arange(len(input_lengths)), np.asarray(input_lengths) - 1]
