"""Q/K row orders for RoPE.

Meta's release and GGUF store Q and K rows for interleaved (GPT-J style) rotation, pairs (0,1), (2,3), ...;
Hugging Face rotates halves, pairs (0, D/2), (1, D/2+1), ... These move rows between the two layouts per head.
"""

from __future__ import annotations

import numpy as np
import torch


def interleaved_to_half(w, num_heads: int):
    """Rows of each head from interleaved order to rotate-half order (undoes llama.cpp's `permute`)."""
    rows = w.shape[0]
    shaped = w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:])
    swapped = shaped.transpose(1, 2) if isinstance(w, torch.Tensor) else np.swapaxes(shaped, 1, 2)
    return swapped.reshape(w.shape)


def half_to_interleaved(w, num_heads: int):
    """The inverse: rotate-half order to interleaved order (what llama.cpp and Meta store)."""
    rows = w.shape[0]
    shaped = w.reshape(num_heads, 2, rows // num_heads // 2, *w.shape[1:])
    swapped = shaped.transpose(1, 2) if isinstance(w, torch.Tensor) else np.swapaxes(shaped, 1, 2)
    return swapped.reshape(w.shape)
