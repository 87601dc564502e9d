"""The eager PyTorch Llama and its checkpoint loaders (Hugging Face, Meta, GGUF).

Attributes load lazily, so `llamaport.models.errors` (used by the torch-free runtime) never imports torch.
"""

from importlib import import_module

_EXPORTS = {
    "LlamaConfig": ".config",
    "RopeScaling": ".config",
    "LlamaForCausalLM": ".llama",
    "LlamaForSequenceClassification": ".llama",
    "load_model": ".loaders",
    "read_checkpoint": ".loaders",
    "Checkpoint": ".loaders",
    "LlamaportError": ".errors",
    "ConfigError": ".errors",
    "CheckpointError": ".errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
