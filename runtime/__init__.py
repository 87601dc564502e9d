"""Run engine directories: tokenizer + ONNX Runtime / TensorRT / eager backends + generation, chat, checks.

Imports neither torch nor onnx: an application that only runs ONNX Runtime engines needs numpy, onnxruntime,
tokenizers/sentencepiece and jinja2.
"""

from .engine import Engine, GenerationResult
from .sampling import SamplingParams
from .tokenizer import Tokenizer

__all__ = ["Engine", "GenerationResult", "SamplingParams", "Tokenizer"]
