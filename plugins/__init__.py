"""Plugin ops (GQA attention with fused RoPE and KV-cache write): torch custom ops with reference
implementations, ONNX lowerings per target, NumPy kernels for onnx's ReferenceEvaluator, Triton kernels, TensorRT
registration.

Importing this package imports nothing heavy (the CLI reads `plugins.kernels.Kernels` for its choices): the ONNX
schemas register when a module that needs them (translations, schemas) is imported, or on `register()`.
"""

from importlib import import_module

_LAZY = {"PLUGIN_DOMAIN", "PLUGIN_VERSION", "register"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        schemas = import_module(".schemas", __name__)
        schemas.register()
        return getattr(schemas, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
