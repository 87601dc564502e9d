"""The one generation loop every backend runs: batched right-padded prefill, then one token per row per step.

Rows finish independently (EOS / stop token, stop string, max_new_tokens, or a full cache). A finished row stops
advancing its cache position, so it never writes past its slot; its logits are simply ignored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from llamaport.errors import LlamaportError

from .sampling import Sampler, SamplingParams, seen_mask


class PromptTooLong(LlamaportError):
    """A prompt longer than the engine's cache. Callers with their own options (the CLI's --truncate, chat's
    "shorten the message") reword the advice from `length` and `max_seq`."""

    def __init__(self, length: int, max_seq: int):
        self.length, self.max_seq = length, max_seq
        super().__init__(
            f"prompt of {length} tokens exceeds the engine's max_seq {max_seq}; shorten it, pass truncate=True, "
            "or re-export with a larger --max-seq"
        )


@dataclass
class RowState:
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Timings:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0

    def as_dict(self) -> dict:
        decode_rate = self.decode_steps / self.decode_s if self.decode_s else 0.0
        return {
            "time_to_first_token_s": self.prefill_s,
            "prefill_tokens_per_s": self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0,
            "decode_s": self.decode_s,
            "decode_steps_per_s": decode_rate,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
        }


class Generation:
    """Iterate to advance: each step yields the new token of every row (None for rows already finished).

    The caller may call `finish(row, reason)` between steps (stop strings are detected on decoded text).
    """

    def __init__(self, backend, prompts: list[list[int]], params: SamplingParams, eos_ids: list[int]):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise LlamaportError("every prompt needs at least one token")
        too_long = [len(p) for p in prompts if len(p) > backend.max_seq]
        if too_long:
            raise PromptTooLong(max(too_long), backend.max_seq)
        self.backend, self.params = backend, params
        self.rows = [RowState(list(p)) for p in prompts]
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_ids))
        self.sampler = Sampler(params)
        self.timings = Timings(prompt_tokens=sum(len(p) for p in prompts))

    def finish(self, row: int, reason: str) -> None:
        if self.rows[row].finish_reason is None:
            self.rows[row].finish_reason = reason

    @property
    def done(self) -> bool:
        return all(r.finish_reason is not None for r in self.rows)

    def __iter__(self):
        rows, backend = self.rows, self.backend
        batch = len(rows)
        backend.reset(batch)
        lengths = np.array([len(r.prompt) for r in rows], dtype=np.int64)
        ids = np.zeros((batch, int(lengths.max())), dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, : len(r.prompt)] = r.prompt
        if self.params.max_new_tokens == 0:
            for b in range(batch):
                self.finish(b, "length")
            return
        start = time.perf_counter()
        logits = backend.forward(ids, np.zeros(batch, np.int64), lengths)
        self.timings.prefill_s = time.perf_counter() - start
        past = lengths.copy()  # tokens in each row's cache
        ones = np.ones(batch, np.int64)
        seen = seen_mask([r.prompt for r in rows], logits.shape[-1]) if self.params.repetition_penalty != 1.0 else None
        decode_start = time.perf_counter()
        while True:
            chosen = self.sampler(logits, seen)
            new: list[int | None] = []
            for b, r in enumerate(rows):
                if r.finish_reason is not None:
                    new.append(None)
                    continue
                token = int(chosen[b])
                if token in self.stop_ids:
                    self.finish(b, "stop")
                    new.append(None)
                    continue
                r.tokens.append(token)
                if seen is not None:
                    seen[b, token] = True
                self.timings.generated_tokens += 1
                new.append(token)
                if len(r.tokens) >= self.params.max_new_tokens or past[b] >= backend.max_seq:
                    self.finish(b, "length")  # the next token would not fit in the cache
            yield new
            if self.done:
                break
            step_ids = np.array([[r.tokens[-1] if r.tokens else 0] for r in rows], dtype=np.int64)
            # A row that finished because its cache is full keeps writing (ignored) into its last slot.
            logits = backend.forward(step_ids, np.minimum(past, backend.max_seq - 1), ones)
            self.timings.decode_steps += 1
            active = np.array([r.finish_reason is None for r in rows])
            past = past + active  # finished rows keep rewriting their last slot, never past max_seq
        self.timings.decode_s = time.perf_counter() - decode_start
