"""Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p, repetition penalty, seed.

NumPy only (the runtime runs without torch). Works on a batch: logits (B, V) -> tokens (B,).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import validate


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the prompt or output
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)  # besides the model's EOS
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)
    ignore_eos: bool = False

    def __post_init__(self):
        # One validation layer for the API and the CLI (runtime/validate.py): finite numbers, ranges, real ints.
        self.max_new_tokens = validate.integer("max_new_tokens", self.max_new_tokens, 0)
        self.temperature = validate.number("temperature", self.temperature, 0.0)
        self.top_k = validate.integer("top_k", self.top_k, 0)
        self.top_p = validate.number("top_p", self.top_p, 0.0, 1.0, low_open=True)
        self.min_p = validate.number("min_p", self.min_p, 0.0, 1.0, high_open=True)
        self.repetition_penalty = validate.number("repetition_penalty", self.repetition_penalty, 0.0, low_open=True)
        if self.seed is not None:  # numpy's SeedSequence takes any non-negative int
            self.seed = validate.integer("seed", self.seed, 0)
        if isinstance(self.stop, str):  # stop="###" means one stop string, not three one-character ones
            self.stop = [self.stop]
        self.stop = [validate.text("stop", s) for s in self.stop]
        if any(not s for s in self.stop):
            raise validate.InvalidValue("stop", "a list of non-empty strings", self.stop)
        if isinstance(self.stop_token_ids, int):
            self.stop_token_ids = [self.stop_token_ids]
        self.stop_token_ids = validate.token_ids(self.stop_token_ids, None, "stop_token_ids")
        if not isinstance(self.ignore_eos, bool):
            raise validate.InvalidValue("ignore_eos", "True or False", self.ignore_eos)


def seen_mask(histories: list[list[int]], vocab_size: int) -> np.ndarray:
    """(B, V) bool: the tokens each row has seen, for the repetition penalty.

    Built once from the prompts; the generation loop then sets one entry per new token, so the penalty costs O(V)
    per step however long the history grows.
    """
    mask = np.zeros((len(histories), vocab_size), dtype=bool)
    for row, history in enumerate(histories):
        mask[row, np.asarray(history, dtype=np.int64)] = True
    return mask


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
        """logits (B, V) -> tokens (B,); `seen` (B, V) bool from `seen_mask`, needed for the repetition penalty."""
        p = self.params
        penalize = p.repetition_penalty != 1.0 and seen is not None
        if p.temperature == 0 and not penalize:
            return logits.argmax(-1)  # greedy: no copy of the (B, V) logits per step
        logits = logits.astype(np.float32, copy=True)  # (B, V)
        if penalize:
            # As in transformers: shrink positive logits, grow negative ones.
            penalized = np.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
            logits = np.where(seen, penalized, logits)
        if p.temperature == 0:
            return logits.argmax(-1)
        logits /= p.temperature
        if p.top_k > 0 and p.top_k < logits.shape[-1]:
            kth = np.partition(logits, -p.top_k, axis=-1)[:, -p.top_k][:, None]
            logits = np.where(logits < kth, -np.inf, logits)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        if p.min_p > 0:
            probs = np.where(probs < p.min_p * probs.max(-1, keepdims=True), 0.0, probs)
        if p.top_p < 1.0:
            order = np.argsort(-probs, axis=-1)
            sorted_probs = np.take_along_axis(probs, order, -1)
            # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
            drop_sorted = np.cumsum(sorted_probs, -1) - sorted_probs >= p.top_p
            drop = np.zeros_like(drop_sorted)
            np.put_along_axis(drop, order, drop_sorted, -1)
            probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(-1, keepdims=True)
        return np.array([self.rng.choice(probs.shape[-1], p=row) for row in probs])
