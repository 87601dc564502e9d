"""Plugin ops (GQA attention with fused RoPE and KV-cache write): torch custom ops with reference
implementations, ONNX lowerings per target, NumPy kernels for onnx's ReferenceEvaluator, TensorRT registration.

Importing this package registers the ONNX schemas; the torch parts load on first use (torch is optional here).
"""

from .schemas import PLUGIN_DOMAIN, PLUGIN_VERSION, register

register()

__all__ = ["PLUGIN_DOMAIN", "PLUGIN_VERSION", "register"]
