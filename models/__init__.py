"""The eager PyTorch Llama and its checkpoint loaders (Hugging Face, Meta, GGUF).

Attributes load lazily, so importing this package never imports torch until a model is used.
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
    "LlamaportError": "llamaport.errors",
    "ConfigError": "llamaport.errors",
    "CheckpointError": "llamaport.errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
