"""What the int4 weights cost in quality, measured at export and recorded in the manifest's `quantization`.

Export verification checks the graph against the eager model running the *same* dequantized weights (graph
correctness). This measures the other half: the eager model on the dequantized weights against the eager model on
the checkpoint's own weights, over `llamaport check`'s perplexity text (so the numbers line up with `check`),
layer by layer like the verification reference (one layer in memory, never the model).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from llamaport.models.loaders.checkpoint import Checkpoint
from llamaport.runtime.check import TEXT, compare_logits, perplexity
from llamaport.runtime.tokenizer import Tokenizer

from .reference import Step, layerwise_logits


def text_ids(tokenizer_files: dict[str, bytes]) -> list[int] | None:
    """`check`'s perplexity text tokenized with the checkpoint's tokenizer files; None without them."""
    if not {"tokenizer.json", "tokenizer.model"} & set(tokenizer_files):
        return None
    return Tokenizer.from_files(tokenizer_files).encode(TEXT)


def _logits(checkpoint: Checkpoint, ids: list[int], progress: Callable[[], None] | None) -> np.ndarray:
    tokens = torch.tensor([ids], dtype=torch.int64)  # (1, T)
    step = Step(tokens, torch.zeros(1, dtype=torch.int64), torch.tensor([len(ids)]))
    return layerwise_logits(checkpoint, [step], progress, all_positions=True)[0][0]  # (T, V)


def weight_quality(checkpoint: Checkpoint, dequantized: Checkpoint, ids: list[int] | None,
                   progress: Callable[[], None] | None = None) -> dict:
    """{perplexity of each, KL and top-1 agreement of the quantized model against the checkpoint} over `ids`."""
    if ids is None or len(ids) < 2:
        return {"measured": False, "reason": "the checkpoint has no tokenizer files to tokenize the text"}
    reference, quantized = _logits(checkpoint, ids, progress), _logits(dequantized, ids, progress)
    metrics = compare_logits(reference, quantized)
    return {"measured": True, "text_tokens": len(ids), "perplexity_reference": perplexity(reference, ids),
            "perplexity_quantized": perplexity(quantized, ids), "kl": metrics["kl"], "top1_agreement": metrics["top1"]}
