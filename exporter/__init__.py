"""torch -> ONNX: trace the Llama with its static KV cache into an engine directory, per target, verified."""

from .export import ExportOptions, export_engine

__all__ = ["ExportOptions", "export_engine"]
