"""One place that checks user-supplied values (sampling settings, CLI numbers, token ids) for the API and the CLI.

Each check returns the value in its canonical Python type or raises `InvalidValue` naming the parameter, the rule
and the offending value. The CLI turns the parameter name into its flag (`top_k` -> `--top-k`) and prints one
`error:` line with exit status 1, so the API and the command line refuse exactly the same values.
Hand-written rather than pydantic: a handful of range checks does not earn a dependency in the torch-free runtime.
"""

from __future__ import annotations

import math
import operator
from typing import Iterable, Sequence

from llamaport.errors import LlamaportError


class InvalidValue(LlamaportError, ValueError):
    """A parameter outside its allowed type or range. Also a ValueError, which SamplingParams raised before."""

    def __init__(self, name: str, rule: str, value):
        self.name, self.rule, self.value = name, rule, value
        super().__init__(f"{name} must be {rule}, got {value!r}")

    def as_flag(self, flag: str | None = None) -> LlamaportError:
        """The same error worded for the command line: `--top-k must be ...`."""
        return LlamaportError(f"{flag or '--' + self.name.replace('_', '-')} must be {self.rule}, got {self.value!r}")


class BadTokenId(LlamaportError, ValueError):
    """A token id that is not an int or lies outside the vocabulary."""


def _bounds(low, high) -> str:
    if low is not None and high is not None:
        return f"from {low} to {high}"
    if low is not None:
        return f">= {low}"
    return f"<= {high}" if high is not None else ""


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """An int (numpy ints too; never a bool or a float such as 2.5 or 2.0) within [low, high]."""
    rule = ("an integer " + _bounds(low, high)).strip()
    if isinstance(value, bool):
        raise InvalidValue(name, rule, value)
    try:
        value = operator.index(value)
    except TypeError:
        raise InvalidValue(name, rule, value) from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidValue(name, rule, value)
    return value


def number(name: str, value, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> float:
    """A finite real number (ints accepted) within its bounds; an open bound excludes the bound itself."""
    lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    rule = "a finite number" + (f" {lo}" if lo else "") + (" and" if lo and hi else "") + (f" {hi}" if hi else "")
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise InvalidValue(name, rule, value)
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidValue(name, rule, value) from None
    if not math.isfinite(value):
        raise InvalidValue(name, rule, value)
    if low is not None and (value <= low if low_open else value < low):
        raise InvalidValue(name, rule, value)
    if high is not None and (value >= high if high_open else value > high):
        raise InvalidValue(name, rule, value)
    return value


def choice(name: str, value, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise InvalidValue(name, "one of " + ", ".join(map(repr, choices)), value)
    return value


def token_ids(ids: Sequence, vocab_size: int | None, what: str = "prompt") -> list[int]:
    """Token ids as a list of ints, each within the vocabulary [0, vocab_size): checked here, before a backend sees
    them, because ONNX Runtime and the eager model would otherwise gather a wrong row or fail inside the graph."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise LlamaportError(f"{what} must be text or a sequence of token ids, got {type(ids).__name__}")
    out = []
    for position, token in enumerate(ids):
        if isinstance(token, bool):
            token = None  # True/False are ints to Python but never a token id a user meant
        try:
            token_int = operator.index(token)
        except TypeError:
            raise BadTokenId(
                f"{what}: token id {token!r} at position {position} is not an integer; token ids are ints "
                f"from 0 to {vocab_size - 1 if vocab_size else 'the vocabulary size - 1'}"
            ) from None
        if token_int < 0 or (vocab_size is not None and token_int >= vocab_size):
            span = f"0 to {vocab_size - 1}" if vocab_size is not None else "ids are >= 0"
            raise BadTokenId(
                f"{what}: token id {token_int} at position {position} is outside the vocabulary "
                f"({span}); check the ids belong to this model's tokenizer"
            )
        out.append(token_int)
    return out


def text(name: str, value) -> str:
    """Text that can be encoded as UTF-8: a lone surrogate (from a broken terminal or a file read with
    errors='surrogateescape') would otherwise fail deep inside the tokenizer."""
    if not isinstance(value, str):
        raise LlamaportError(f"{name} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise LlamaportError(
            f"{name} is not valid UTF-8 text: character {value[e.start]!r} at position {e.start} "
            "(a lone surrogate, usually from bytes that were not UTF-8); fix the text's encoding"
        ) from None
    return value
