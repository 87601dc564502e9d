"""What GPU this process sees, without torch: the CUDA runtime through Polygraphy's loader of libcudart.

TensorRT engines are tied to the GPU architecture they were built for ("Without this mode, engines are not
portable across different GPU architectures": TensorRT docs, Support Matrix, Engine Portability), so the build
records the compute capability and the TensorRT backend compares it.
"""

from __future__ import annotations

import ctypes

from llamaport.errors import LlamaportError, MissingDependency

# What every TensorRT command says when TensorRT is missing (PyPI's `tensorrt` needs NVIDIA's index for its libraries).
TENSORRT_INSTALL_HINT = ("pip install 'llamaport[tensorrt]' on a Linux machine with an NVIDIA GPU (TensorRT's "
                         "libraries come from NVIDIA's package index: pip install tensorrt --extra-index-url "
                         "https://pypi.nvidia.com)")
# cudaDeviceAttr values (CUDA runtime API, driver_types.h): cudaDevAttrComputeCapabilityMajor/Minor.
_CC_MAJOR, _CC_MINOR = 75, 76


def compute_capability(device: int = 0) -> str:
    """"major.minor" of CUDA device `device` (e.g. "9.0" for an H100)."""
    try:
        from polygraphy import cuda
    except ImportError:
        raise MissingDependency("reading the GPU needs polygraphy: pip install 'llamaport[tensorrt]'") from None
    lib = cuda.wrapper().handle  # ctypes.CDLL of libcudart (polygraphy/cuda/cuda.py, Cuda.__init__)
    values = []
    for attr in (_CC_MAJOR, _CC_MINOR):
        value = ctypes.c_int()
        status = lib.cudaDeviceGetAttribute(ctypes.byref(value), attr, device)
        if status != 0:
            raise LlamaportError(f"cannot query CUDA device {device} (cudaError {status}); is an NVIDIA GPU visible?")
        values.append(value.value)
    return f"{values[0]}.{values[1]}"
