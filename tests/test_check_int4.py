"""`check` of int4 engines: their cosine is judged on centered logits (softmax ignores a constant shift, and int4
rounding shifts every logit of a position), so rounding-like noise passes the INT4 row and damaged weights fail it;
fp32/fp16/bf16 keep the raw cosine. Synthetic logits from a stand-in engine: no model, no asset, about a second
per test.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from llamaport.enginedir import INT4, CosineOf, thresholds
from llamaport.runtime.check import compare_logits, run_check

VOCAB = 320
INT4_QUANT = {"bits": 4, "method": "rtn", "group_size": 32}


class Tokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode())[:200]  # byte ids < 256 < VOCAB


class SyntheticEngine:
    """Logits that depend on the last two tokens, like a tiny bigram model, optionally perturbed per position.

    Each token adds its own offset to every logit (-3 to 15, as SmolLM2's per-position logit means range), so
    some positions have logits whose mean is near 0: where a shift hurts the raw cosine most.
    """

    tokenizer, max_seq = Tokenizer(), 512
    _rng = np.random.default_rng(0)
    _table = _rng.normal(0.0, 3.0, (VOCAB, VOCAB)).astype(np.float32)  # (V, V)
    _offset = _rng.uniform(-3.0, 15.0, VOCAB).astype(np.float32)  # (V,)

    def __init__(self, perturb=None):
        self.perturb = perturb

    def logits(self, ids: list[int]) -> np.ndarray:
        ids = np.asarray(ids)
        previous = np.concatenate([ids[:1], ids[:-1]])
        out = self._table[ids] + 0.5 * self._table[previous] + self._offset[ids, None]  # (S, V)
        return out if self.perturb is None else self.perturb(out, ids)

    def generate(self, ids: list[int], params) -> SimpleNamespace:
        ids, new = list(ids), []
        for _ in range(params.max_new_tokens):
            new.append(int(self.logits(ids)[-1].argmax()))
            ids.append(new[-1])
        return SimpleNamespace(token_ids=new)


def int4_like(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """What sound int4 weights did to SmolLM2's logits: every logit of a position shifted by 3-6, plus noise."""
    rng = [np.random.default_rng(int(t) * 7919 + s) for s, t in enumerate(ids)]
    shift = np.array([r.uniform(3.0, 6.0) for r in rng], np.float32)[:, None]  # (S, 1)
    noise = np.stack([r.normal(0.0, 0.8, logits.shape[-1]) for r in rng]).astype(np.float32)  # (S, V)
    return logits + shift + noise


def damaged(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """A damaged layer (shuffled codes): the engine ranks unrelated tokens, on top of the int4 rounding."""
    return int4_like(logits, ids)[:, np.random.default_rng(1).permutation(logits.shape[-1])]


def test_centered_cosine_ignores_a_constant_shift_that_the_raw_cosine_does_not():
    expected = np.random.default_rng(0).normal(0.0, 3.0, (2, VOCAB)).astype(np.float32)  # (S, V), mean near 0
    shifted = expected + 5.0
    raw, centered = compare_logits(expected, shifted), compare_logits(expected, shifted, CosineOf.CENTERED_LOGITS)
    assert raw["cosine"] < 0.6 and centered["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert raw["kl"] == pytest.approx(0.0, abs=1e-9) == centered["kl"]  # the distributions are the same


def test_int4_check_passes_rounding_noise_that_shifts_the_logits():
    report = run_check(SyntheticEngine(int4_like), SyntheticEngine(), dtype="fp32", quantization=INT4_QUANT)
    assert report["passed"], report["failures"]
    assert report["cosine_of"] == "centered-logits" and report["thresholds"] == {**vars(INT4.check)}
    ids = Tokenizer().encode("Once upon a time, in a small village by the sea,")
    reference = SyntheticEngine().logits(ids)
    raw = compare_logits(reference, int4_like(reference, np.asarray(ids)))["cosine"]
    assert raw < INT4.check.cosine  # what failed sound int4 engines before: the shift, not the noise


def test_int4_check_fails_an_engine_with_damaged_weights():
    report = run_check(SyntheticEngine(damaged), SyntheticEngine(), dtype="fp32", quantization=INT4_QUANT)
    assert not report["passed"]
    failed = {line.split()[0] for line in report["failures"]}
    assert {"cosine", "kl", "top1", "top5"} <= failed  # (the byte-level stand-in's perplexity means nothing)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_float_precisions_keep_the_raw_cosine_so_a_shift_fails_them(dtype):
    assert thresholds(dtype).check_cosine_of is CosineOf.LOGITS
    assert thresholds(dtype, INT4_QUANT).check_cosine_of is CosineOf.CENTERED_LOGITS
    shifted = SyntheticEngine(lambda logits, ids: logits + 4.0)
    report = run_check(shifted, SyntheticEngine(), greedy_tokens=2, dtype=dtype)
    assert report["cosine_of"] == "logits" and any(f.startswith("cosine") for f in report["failures"])
