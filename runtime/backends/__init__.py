"""Engines run through one interface: `reset(batch)` prepares caches, `forward(...)` returns last-token logits.

    forward(input_ids (B, S) int64, past_lengths (B,) int64, input_lengths (B,) int64) -> logits (B, V) float32

Right-padded rows: row b holds input_lengths[b] real tokens, written at past_lengths[b] onwards. Backends keep
their caches and update them in place. Imports are lazy so the ONNX Runtime path never loads torch.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str
    max_seq: int
    max_batch: int

    def reset(self, batch: int) -> None: ...

    def forward(self, input_ids: np.ndarray, past_lengths: np.ndarray, input_lengths: np.ndarray) -> np.ndarray: ...
