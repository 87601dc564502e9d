"""TensorRT backend: runs `model.engine` built from a `--target trt` export (the build step is a separate issue).

Thin by design: everything beneath it (graph semantics, plugin math) is verified without TensorRT.
"""

from __future__ import annotations

from pathlib import Path

from llamaport.errors import LlamaportError


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, folder: Path, manifest: dict):
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise LlamaportError(
                "backend 'tensorrt' needs TensorRT (pip install 'llamaport[tensorrt]' on a machine with an NVIDIA GPU)"
            ) from None
        if not (folder / "model.engine").exists():
            raise LlamaportError(f"{folder} has no model.engine; build one from this --target trt export first")
        raise LlamaportError("the TensorRT engine runner is not available in this version of llamaport")
