"""Engines run through one interface: `reset(batch)` prepares caches, `forward(...)` returns last-token logits.

    forward(input_ids (B, S) int64, past_lengths (B,) int64, input_lengths (B,) int64) -> logits (B, V) float32

Right-padded rows: row b holds input_lengths[b] real tokens, written at past_lengths[b] onwards. Backends keep
their caches and update them in place. Imports are lazy so the ONNX Runtime path never loads torch.
`open_backend` picks and opens the backend for an engine directory; `Engine` only asks it for one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from llamaport.enginedir import BackendName, Manifest, parse
from llamaport.errors import LlamaportError

if TYPE_CHECKING:
    import numpy as np


class Backend(Protocol):
    name: str
    max_seq: int
    max_batch: int

    def reset(self, batch: int) -> None: ...

    def forward(self, input_ids: np.ndarray, past_lengths: np.ndarray, input_lengths: np.ndarray) -> np.ndarray: ...


def resolve(backend: BackendName | str, manifest: Manifest) -> BackendName:
    """What "auto" means for this engine: TensorRT for TensorRT targets (trt, trt-native), else ONNX Runtime."""
    kind = parse(BackendName, backend, "backend")
    if kind is BackendName.AUTO:
        return BackendName.TENSORRT if manifest.target.is_tensorrt else BackendName.ONNXRUNTIME
    return kind


def open_backend(folder: Path, manifest: Manifest, backend: BackendName | str = BackendName.AUTO,
                 device: str = "cpu", threads: int | None = None, low_memory: bool = False) -> Backend:
    """The backend that runs engine directory `folder` (its manifest already validated by enginedir).

    `low_memory` (ONNX Runtime): one copy of the weights, slower; what export verification uses."""
    kind = resolve(backend, manifest)
    if kind is BackendName.TENSORRT:
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(Path(folder), manifest)
    if kind is BackendName.ONNXRUNTIME:
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(Path(folder), manifest, device, threads, low_memory)
    raise LlamaportError(f"backend {kind} runs a checkpoint, not an engine directory; open {folder} with another "
                         "backend")
