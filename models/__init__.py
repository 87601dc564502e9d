"""The eager PyTorch Llama and its checkpoint loaders (Hugging Face, Meta, GGUF)."""

from .config import LlamaConfig, RopeScaling
from .errors import CheckpointError, ConfigError, LlamaportError
from .llama import LlamaForCausalLM, LlamaForSequenceClassification
from .loaders import Checkpoint, load_model, read_checkpoint

__all__ = [
    "LlamaConfig",
    "RopeScaling",
    "LlamaForCausalLM",
    "LlamaForSequenceClassification",
    "load_model",
    "read_checkpoint",
    "Checkpoint",
    "LlamaportError",
    "ConfigError",
    "CheckpointError",
]
