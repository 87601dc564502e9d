"""Which attention kernels an eager model runs: the reference ops, or the Triton kernels.

    model = use_kernels(model, Kernels.TRITON)     # every attention layer through plugins/triton_attention.py

`Kernels` is the one place the option's spellings live (the CLI builds its choices from it). Imports no torch.
"""

from __future__ import annotations

import enum

from llamaport.errors import LlamaportError


class Kernels(str, enum.Enum):  # a str, so "triton" and Kernels.TRITON compare equal wherever it is passed
    REFERENCE = "reference"  # the model's own torch attention (llamaport.models.attention.gqa_attention)
    TRITON = "triton"  # plugins/triton_attention.py; on CPU tensors it needs TRITON_INTERPRET=1 (slow; tests)

    @classmethod
    def parse(cls, value: "Kernels | str") -> "Kernels":
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(k.value for k in cls)
            raise LlamaportError(f"--kernels {value!r} is not one of {names}") from None


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_kernels(model, kernels: Kernels | str):
    """Route every attention layer of `model` through `kernels` (like plugins.ops.use_plugin_attention)."""
    kernels = Kernels.parse(kernels)
    if kernels is Kernels.REFERENCE:
        from llamaport.models.attention import gqa_attention as attention_fn
    else:
        if not triton_available():
            raise LlamaportError("--kernels triton needs the triton package: pip install 'llamaport[cuda]'")
        from .triton_attention import gqa_attention_triton as attention_fn
    for module in model.modules():
        if hasattr(module, "attention_fn"):
            module.attention_fn = attention_fn
    return model
