"""TensorRT backend: runs `model.engine` (from `llamaport build`) behind the same reset/forward protocol as the
other backends, so the same generation loop, sampling and `check` run on it.

- Refuses, naming the rebuild command, an engine built by another TensorRT version, for another GPU architecture
  or with other llamaport plugin kernels (`engine_problems`, a pure function of the manifest's build record):
  "By default, TensorRT engines are compatible only with the version of TensorRT used to build them" and
  "Without this mode, engines are not portable across different GPU architectures" (TensorRT docs, Engine
  Compatibility / Support Matrix).
- One execution context per optimization profile (0 = prefill, 1 = decode; plugins/trt_build.profiles_for),
  each bound once to the same buffers; a call runs on the context of its profile (`profile_for`).
- KV caches are allocated once per batch size on the device and bound as both past.{i}.* and present.{i}.*:
  the cache update happens in place (IKVCacheUpdateLayer's output "must share the same device memory address"
  as its input, include/NvInfer.h; our plugin's cache outputs are aliased to its inputs).
- Decode is captured in a CUDA graph per batch size after one plain run, as trtexec --useCudaGraph does
  (TensorRT samples/common/sampleInference.cpp: enqueue once, then capture; fall back to plain enqueue if the
  capture fails). Only the small id/length inputs and the logits cross PCIe per step.
Device memory and copies go through Polygraphy's CUDA wrapper (polygraphy/cuda/cuda.py), so this path needs
tensorrt, polygraphy and numpy: no torch, no onnx.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamaport import enginedir
from llamaport.errors import LlamaportError, MissingDependency
from llamaport.gpu import TENSORRT_INSTALL_HINT as INSTALL_HINT

PREFILL, DECODE = 0, 1  # optimization profile indices, in plugins/trt_build.profiles_for's order
# TensorRT's DataType names (trt.DataType, python/src/infer/pyFoundationalTypes.cpp) spelled as the manifest does.
_TRT_TYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32"}
# Cache buffers are only zeroed and bound, never read on the host, so bf16 travels as its 2-byte container.
_NP = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int64": np.int64, "int32": np.int32}


# ------------------------------------------------------------------------------------------------ pure checks
@dataclass(frozen=True)
class RuntimeInfo:
    """What this machine runs engines with."""

    tensorrt_version: str
    compute_capability: str
    plugin_version: str = enginedir.TRT_PLUGIN_VERSION


def engine_problems(manifest: Mapping, runtime: RuntimeInfo) -> list[str]:
    """Why the engine of `manifest` cannot run under `runtime` (empty: it can)."""
    record = manifest.get(enginedir.TRT_BUILD)
    if not isinstance(record, Mapping):
        return ["its manifest has no TensorRT build record (the directory was not written by 'llamaport build')"]
    problems = []
    if record.get("tensorrt_version") != runtime.tensorrt_version:
        problems.append(f"it was built with TensorRT {record.get('tensorrt_version')} and this machine has "
                        f"TensorRT {runtime.tensorrt_version}")
    if record.get("compute_capability") != runtime.compute_capability:
        problems.append(f"it was built for a GPU of compute capability {record.get('compute_capability')} and this "
                        f"GPU is {runtime.compute_capability}")
    if record.get("plugins") == "llamaport" and record.get("plugin_version") != runtime.plugin_version:
        problems.append(f"it holds llamaport plugin kernels version {record.get('plugin_version')} and this "
                        f"llamaport's are version {runtime.plugin_version}")
    return problems


def rebuild_command(folder: Path, manifest: Mapping) -> str:
    """The command that rebuilds `folder`'s engine here (an engine directory keeps its model.onnx)."""
    record = manifest.get(enginedir.TRT_BUILD)
    plugins = record.get("plugins", "llamaport") if isinstance(record, Mapping) else "llamaport"
    return f"llamaport build {folder} -o {folder.name}-rebuilt --plugins {plugins}"


def check_engine(folder: Path, manifest: Mapping, runtime: RuntimeInfo) -> None:
    problems = engine_problems(manifest, runtime)
    if problems:
        raise LlamaportError(f"{folder / enginedir.TRT_ENGINE} cannot run here: {'; '.join(problems)}. Rebuild it "
                             f"on this machine: {rebuild_command(folder, manifest)}")


def engine_signature(engine, is_input, order: list[str]) -> tuple[list[enginedir.TensorSpec], list[enginedir.TensorSpec]]:
    """The engine's inputs and outputs as TensorSpecs (dynamic dims, -1 in TensorRT, read as "?"), each list in
    `order` (the manifest's names; others after them), since TensorRT's I/O numbering need not follow the ONNX
    graph's. Through ICudaEngine's I/O tensor API (num_io_tensors, get_tensor_name/shape/dtype; TensorRT
    python/src/infer/pyCore.cpp); `is_input(name)` tells the two apart (get_tensor_mode).
    """
    rank = {name: i for i, name in enumerate(order)}
    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        dtype = engine.get_tensor_dtype(name).name
        shape = tuple("?" if d < 0 else int(d) for d in engine.get_tensor_shape(name))
        (inputs if is_input(name) else outputs).append(enginedir.TensorSpec(name, shape, _TRT_TYPES.get(dtype, dtype)))
    key = lambda spec: rank.get(spec.name, len(rank))  # noqa: E731
    return sorted(inputs, key=key), sorted(outputs, key=key)


def profile_for(seq_len: int) -> int:
    """The optimization profile (and execution context) a call with `seq_len` new tokens per row runs on."""
    return DECODE if seq_len == 1 else PREFILL


def require_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise MissingDependency(f"backend 'tensorrt' needs TensorRT, which is not installed: {INSTALL_HINT}") from None
    try:
        from polygraphy import cuda
    except ImportError:
        raise MissingDependency("backend 'tensorrt' needs polygraphy: pip install 'llamaport[tensorrt]'") from None
    return tensorrt, cuda


# ------------------------------------------------------------------------------------------------ CUDA graphs
class _CudaGraph:
    """One captured stream, through the CUDA runtime (cudaStreamBeginCapture ... cudaGraphLaunch) via ctypes."""

    _THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal

    def __init__(self, cudart, stream_ptr: int):
        self.lib, self.stream = cudart, ctypes.c_void_p(stream_ptr)
        self.graph, self.exec = ctypes.c_void_p(), ctypes.c_void_p()

    def capture(self, run) -> bool:
        """Record `run()` (one enqueue) on the stream; False (and nothing kept) when the capture fails."""
        if self.lib.cudaStreamBeginCapture(self.stream, self._THREAD_LOCAL) != 0:
            return False
        ok = run()
        status = self.lib.cudaStreamEndCapture(self.stream, ctypes.byref(self.graph))
        if not ok or status != 0:
            self.lib.cudaGetLastError()  # clear the capture error, as trtexec does
            return False
        return self.lib.cudaGraphInstantiate(ctypes.byref(self.exec), self.graph, ctypes.c_ulonglong(0)) == 0

    def launch(self) -> None:
        status = self.lib.cudaGraphLaunch(self.exec, self.stream)
        if status != 0:
            raise LlamaportError(f"CUDA graph launch failed (cudaError {status})")

    def __del__(self):
        if self.exec:
            self.lib.cudaGraphExecDestroy(self.exec)
        if self.graph:
            self.lib.cudaGraphDestroy(self.graph)


# ------------------------------------------------------------------------------------------------ backend
class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, folder: Path, manifest: Mapping, use_cuda_graphs: bool = True):
        trt, cuda = require_tensorrt()
        folder = Path(folder)
        path = folder / enginedir.TRT_ENGINE
        if not path.exists():
            raise LlamaportError(f"{folder} has no {enginedir.TRT_ENGINE}; build one from this export first: "
                                 f"llamaport build {folder} -o {folder.name}-engine")
        from llamaport.gpu import compute_capability

        check_engine(folder, manifest, RuntimeInfo(trt.__version__, compute_capability()))
        self.trt, self.cuda = trt, cuda
        self.cudart = cuda.wrapper().handle
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise LlamaportError(f"TensorRT could not load {path} (see its log above); rebuild it on this machine: "
                                 f"{rebuild_command(folder, manifest)}")
        # A manifest edited by hand (max_seq, dtype) or copied from another export would size the buffers bound
        # below wrongly: refused here, as the ONNX Runtime backend does, naming the file.
        inputs, outputs = engine_signature(
            self.engine, lambda name: self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
            [spec.name for spec in (*manifest.inputs, *manifest.outputs)])
        enginedir.check_graph_signature(manifest, inputs, outputs, graph=enginedir.TRT_ENGINE)
        if self.engine.num_optimization_profiles != 2:
            raise LlamaportError(f"{path} has {self.engine.num_optimization_profiles} optimization profiles, not "
                                 f"prefill + decode; rebuild it: {rebuild_command(folder, manifest)}")
        self.stream = cuda.Stream()
        self.contexts = []
        for index in (PREFILL, DECODE):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, self.stream.ptr)
            self.contexts.append(context)
        self.manifest = manifest
        self.max_seq, self.max_batch = manifest["max_seq"], manifest["max_batch"]
        self.all_logits = enginedir.LogitsMode(manifest["logits"]) is enginedir.LogitsMode.ALL
        self.vocab_size = manifest["config"]["vocab_size"]
        self.inputs = {i["name"]: i for i in manifest["inputs"]}
        self.cache_names = [n for n in self.inputs if enginedir.is_past_name(n)]
        self.use_cuda_graphs = use_cuda_graphs
        self.batch = None

    # -- buffers
    def _device(self, shape: tuple[int, ...], dtype) -> object:
        array = self.cuda.DeviceArray(shape=shape, dtype=dtype)
        array.copy_from(np.zeros(shape, dtype), self.stream)  # zeroed once: unfilled slots are finite (masked)
        return array

    def reset(self, batch: int) -> None:
        if batch > self.max_batch:
            raise LlamaportError(f"batch {batch} exceeds this engine's --max-batch {self.max_batch}; re-export and "
                                 "rebuild with a larger one")
        if batch == self.batch:
            return  # stale cache entries are never read: attention stops at each row's length
        self._free_buffers()
        self.graphs: dict[tuple, _CudaGraph | None] = {}
        self.buffers = {}
        for name in self.cache_names:  # (B, H_kv, S_max, D), bound as past.* and present.*
            spec = self.inputs[name]
            self.buffers[name] = self._device((batch, *spec["shape"][1:]), _NP[spec["dtype"]])
        self.buffers[enginedir.INPUT_IDS] = self._device((batch, self.max_seq), np.int64)
        for name in (enginedir.PAST_LENGTHS, enginedir.INPUT_LENGTHS):
            if name in self.inputs:
                self.buffers[name] = self._device((batch,), np.int64)
        rows = self.max_seq if self.all_logits else 1
        self.buffers[enginedir.LOGITS] = self._device((batch, rows, self.vocab_size), np.float32)  # (B, 1|S, V)
        for context in self.contexts:
            for name, buffer in self.buffers.items():
                context.set_tensor_address(name, buffer.ptr)
            for name in self.cache_names:
                context.set_tensor_address(enginedir.present_for(name), self.buffers[name].ptr)
                context.set_input_shape(name, self.buffers[name].shape)
        self.batch = batch

    def _free_buffers(self) -> None:
        """Polygraphy's DeviceArray frees its memory only on .free() (it has no finalizer): without this each new
        batch size would keep the previous caches on the GPU."""
        if getattr(self, "buffers", None):
            self.stream.synchronize()
            for buffer in self.buffers.values():
                buffer.free()
        self.buffers, self.graphs, self.batch = {}, {}, None

    def close(self) -> None:
        """Free the device buffers now (they are also freed when the backend is garbage collected)."""
        self._free_buffers()

    def __del__(self):
        try:
            self._free_buffers()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass

    # -- calls
    def _upload(self, name: str, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host, dtype=np.int64)
        self.cuda.wrapper().memcpy(self.buffers[name].ptr, host.ctypes.data, host.nbytes,
                                   self.cuda.MemcpyKind.HostToDevice, self.stream.ptr)

    def _enqueue(self, context) -> bool:
        return bool(context.execute_async_v3(self.stream.ptr))

    def _run(self, index: int, shape_key: tuple) -> None:
        context = self.contexts[index]
        if index != DECODE or not self.use_cuda_graphs:
            if not self._enqueue(context):
                raise LlamaportError("TensorRT execution failed (see its log above)")
            return
        graph = self.graphs.get(shape_key)
        if graph is not None:
            graph.launch()
            return
        if not self._enqueue(context):  # the plain run first: its results are this step's
            raise LlamaportError("TensorRT execution failed (see its log above)")
        if shape_key not in self.graphs:  # capture once per shape; None records a capture that failed
            self.stream.synchronize()
            captured = _CudaGraph(self.cudart, self.stream.ptr)
            self.graphs[shape_key] = captured if captured.capture(lambda: self._enqueue(context)) else None

    def forward(self, input_ids, past_lengths, input_lengths, all_positions: bool = False) -> np.ndarray:
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)  # (B, S)
        batch, seq_len = ids.shape
        if batch != self.batch:
            self.reset(batch)
        index = profile_for(seq_len)
        context = self.contexts[index]
        self._upload(enginedir.INPUT_IDS, ids)
        self._upload(enginedir.PAST_LENGTHS, past_lengths)
        context.set_input_shape(enginedir.INPUT_IDS, (batch, seq_len))
        context.set_input_shape(enginedir.PAST_LENGTHS, (batch,))
        if not self.all_logits:
            self._upload(enginedir.INPUT_LENGTHS, input_lengths)
            context.set_input_shape(enginedir.INPUT_LENGTHS, (batch,))
        self._run(index, (index, batch, seq_len))
        rows = seq_len if self.all_logits else 1
        out = np.empty((batch, rows, self.vocab_size), np.float32)  # the engine wrote it from the buffer's start
        self.cuda.wrapper().memcpy(out.ctypes.data, self.buffers[enginedir.LOGITS].ptr, out.nbytes,
                                   self.cuda.MemcpyKind.DeviceToHost, self.stream.ptr)
        self.stream.synchronize()
        if not self.all_logits:
            return out[:, -1]
        if all_positions:
            return out
        return out[np.arange(batch), np.asarray(input_lengths) - 1]
