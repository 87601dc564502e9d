"""The eager PyTorch model as a backend: the reference every engine is checked against."""

from __future__ import annotations

import numpy as np

from llamaport.errors import LlamaportError


class EagerBackend:
    name = "eager"

    def __init__(self, model, max_seq: int, max_batch: int = 64):
        import torch

        self.torch, self.model = torch, model
        self.max_seq, self.max_batch = max_seq, max_batch
        self.vocab_size = model.config.vocab_size
        self.batch = None

    def reset(self, batch: int) -> None:
        if batch > self.max_batch:
            raise LlamaportError(f"batch {batch} exceeds max_batch {self.max_batch}")
        if batch != self.batch:
            self.cache = self.model.new_cache(batch, self.max_seq)
            self.batch = batch

    def forward(self, input_ids, past_lengths, input_lengths, all_positions: bool = False) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            logits, self.cache = self.model(
                torch.from_numpy(np.asarray(input_ids, np.int64)), torch.from_numpy(np.asarray(past_lengths, np.int64)),
                self.cache, last_only=not all_positions, input_lengths=torch.from_numpy(np.asarray(input_lengths, np.int64)),
            )
        logits = logits.float().numpy()
        return logits if all_positions else logits[:, -1]
