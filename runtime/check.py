"""`llamaport check`: an engine against the eager PyTorch model, in numbers, with per-precision thresholds.

Per prompt: max/mean/median |logit diff| (Polygraphy's SimpleCompareFunc, the comparison TensorRT users know from
`polygraphy run --atol`), cosine similarity at the worst position (of what the precision's threshold row names:
the logits, or for int4 the logits less their mean, see `CosineOf`), KL(eager || engine), top-1 and top-5
agreement, and the fraction of N greedy tokens both generate identically. On a text: perplexity of each and the
relative delta. Polygraphy has no distribution metrics, so cosine/KL/top-k/perplexity are computed here with NumPy.
Needs torch (the eager reference) and polygraphy: both come with the `[export]` extra.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict, dataclass

import numpy as np

from llamaport.enginedir import CosineOf
from llamaport.enginedir import thresholds as thresholds_for
from llamaport.errors import LlamaportError

from . import validate
from .engine import Engine
from .sampling import SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Plants create energy through a process called",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
]
TEXT = (
    "The sun is the star at the centre of the Solar System. It is a massive, nearly perfect sphere of hot plasma, "
    "heated to incandescence by nuclear fusion reactions in its core, radiating the energy from its surface mainly "
    "as visible light and infrared radiation with ten percent at ultraviolet energies. It is by far the most "
    "important source of energy for life on Earth."
)
# Each metric's bound per engine dtype comes from the one threshold table, llamaport.enginedir.THRESHOLDS.


@dataclass
class PromptReport:
    prompt: str
    max_abs_diff: float
    mean_abs_diff: float
    median_abs_diff: float
    cosine: float
    kl: float
    top1: float
    top5: float
    greedy_match: float


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def elementwise_error(expected: np.ndarray, got: np.ndarray) -> dict:
    """Max/mean/median |diff| through Polygraphy's comparator.

    Only its statistics are used: the thresholds are ours, per dtype. Polygraphy logs each comparison (a
    mismatch against its own default tolerance at ERROR) and prints to stdout, which `check --json` owns, so it
    is silenced and anything it still prints goes to stderr.
    """
    from polygraphy.comparator import IterationResult
    from polygraphy.comparator.compare import SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity, G_LOGGER.colors = G_LOGGER.CRITICAL, False
    compare = SimpleCompareFunc(check_error_stat="max")
    with contextlib.redirect_stdout(sys.stderr):
        result = compare(IterationResult({"logits": expected}, runner_name="eager"),
                         IterationResult({"logits": got}, runner_name="engine"))["logits"]
    return {"max_abs_diff": float(result.max_absdiff), "mean_abs_diff": float(result.mean_absdiff),
            "median_abs_diff": float(result.median_absdiff)}


def cosine(expected: np.ndarray, got: np.ndarray, of: CosineOf = CosineOf.LOGITS) -> np.ndarray:
    """(S,) cosine similarity per position of (S, V) logits, of what `of` names."""
    if of is CosineOf.CENTERED_LOGITS:  # softmax ignores a constant added to a row, so the cosine must too
        expected = expected - expected.mean(-1, keepdims=True)  # (S, V)
        got = got - got.mean(-1, keepdims=True)  # (S, V)
    return (expected * got).sum(-1) / (np.linalg.norm(expected, axis=-1) * np.linalg.norm(got, axis=-1))


def compare_logits(expected: np.ndarray, got: np.ndarray, cosine_of: CosineOf = CosineOf.LOGITS) -> dict:
    """Metrics over positions for (S, V) logits; `cosine` is the worst position's."""
    expected, got = np.asarray(expected, np.float32), np.asarray(got, np.float32)
    cos = cosine(expected, got, cosine_of)  # (S,)
    log_p, log_q = _log_softmax(expected), _log_softmax(got)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    top1_ref = expected.argmax(-1)
    top5_got = np.argsort(-got, axis=-1)[:, :5]
    return {
        **elementwise_error(expected, got),
        "cosine": float(cos.min()),
        "kl": float(kl.mean()),
        "top1": float(np.mean(top1_ref == got.argmax(-1))),
        "top5": float(np.mean([t in row for t, row in zip(top1_ref, top5_got)])),
    }


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    log_probs = _log_softmax(logits[:-1])
    nll = -log_probs[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))


def greedy_match(engine: Engine, reference: Engine, ids: list[int], n: int) -> float:
    params = SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)
    a = engine.generate(ids, params).token_ids
    b = reference.generate(ids, params).token_ids
    same = 0
    for x, y in zip(a, b):
        if x != y:
            break
        same += 1
    return same / max(1, len(b))


def _check_inputs(engine: Engine, prompts, text, greedy_tokens):
    """The engine's own tokenizer (what generate and chat will use), after checking the inputs are usable."""
    if engine.tokenizer is None:
        raise LlamaportError(
            "the engine has no tokenizer files (tokenizer.json or tokenizer.model), so check cannot encode its text "
            "prompts and generate/chat cannot take text; re-export from a checkpoint with tokenizer files, or copy "
            "them into the engine directory"
        )
    if prompts is not None and not [p for p in prompts if isinstance(p, str) and p.strip()]:
        raise LlamaportError("no check prompts given (an empty list or only blank lines); give at least one prompt")
    if text is not None and not text.strip():
        raise LlamaportError("the perplexity text is empty; give some text")
    validate.integer("greedy_tokens", greedy_tokens, 1)
    return engine.tokenizer


def run_check(engine: Engine, reference: Engine, prompts: list[str] | None = None, text: str | None = None,
              greedy_tokens: int = 16, dtype: str = "fp32", quantization: dict | None = None) -> dict:
    tokenizer = _check_inputs(engine, prompts, text, greedy_tokens)
    precision = thresholds_for(dtype, quantization)
    rows = []
    for prompt in PROMPTS if prompts is None else prompts:
        ids = tokenizer.encode(prompt)
        if len(ids) + greedy_tokens > engine.max_seq:
            raise LlamaportError(
                f"check prompt {prompt[:40]!r} is {len(ids)} tokens; with {greedy_tokens} greedy tokens it exceeds "
                f"the engine's max_seq {engine.max_seq}; shorten it or lower --greedy-tokens"
            )
        metrics = compare_logits(reference.logits(ids), engine.logits(ids), precision.check_cosine_of)
        metrics["greedy_match"] = greedy_match(engine, reference, ids, greedy_tokens)
        rows.append(PromptReport(prompt, **metrics))
    text_ids = tokenizer.encode(text or TEXT)[: engine.max_seq]
    if len(text_ids) < 2:
        raise LlamaportError(f"the perplexity text is {len(text_ids)} token(s); perplexity needs at least 2")
    ppl_ref, ppl_engine = perplexity(reference.logits(text_ids), text_ids), perplexity(engine.logits(text_ids), text_ids)
    bounds = precision.check
    thresholds = asdict(bounds)
    worst = {
        "max_abs_diff": max(r.max_abs_diff for r in rows),
        "cosine": min(r.cosine for r in rows),
        "kl": max(r.kl for r in rows),
        "top1": min(r.top1 for r in rows),
        "top5": min(r.top5 for r in rows),
        "greedy_match": min(r.greedy_match for r in rows),
        "ppl_rel_delta": abs(ppl_engine - ppl_ref) / ppl_ref,
    }
    failures = bounds.failures(worst)
    return {
        "dtype": dtype,
        "cosine_of": str(precision.check_cosine_of),
        "prompts": [asdict(r) for r in rows],
        "perplexity": {"reference": ppl_ref, "engine": ppl_engine, "tokens": len(text_ids)},
        "worst": worst,
        "thresholds": thresholds,
        "failures": failures,
        "passed": not failures,
    }
