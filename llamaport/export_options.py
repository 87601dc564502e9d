"""Export options and paths checked before torch is imported or any weight is read: cheap checks first.

Importing torch takes seconds and loading a 7B model minutes, so a typo in `--dtype`, an existing `-o` or a
missing source must be reported before either. This module imports neither torch nor the exporter (whose package
imports torch), so the CLI calls it first; `export_engine` calls it too, for API users.
"""

from __future__ import annotations

from pathlib import Path

from llamaport.enginedir import DType, LogitsMode, Target, Task
from llamaport.errors import CheckpointError, LlamaportError

# The option spellings come from the engine-directory module's typed names; the exporter maps them to torch
# dtypes, model classes and graph lowerings (tests/test_bad_inputs.py pins them to the exporter's own tables).
TARGETS = tuple(Target.choices())
DTYPES = tuple(DType.choices())
TASKS = tuple(Task.choices())
LOGITS = tuple(LogitsMode.choices())
DEFAULT_MAX_SEQ = 4096
# Export verification runs a prompt and then verify_steps + 1 = 5 decode steps through the cache, so a smaller
# cache cannot be verified (it failed inside the eager reference); 8 leaves that room and then some.
MIN_MAX_SEQ = 8


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_export_request(src, *, target: str = "onnx", dtype: str = "fp32", max_seq: int | None = None,
                         max_batch: int = 1, logits: str = "last", task: str = "causal-lm",
                         ) -> tuple[int | None, str | None]:
    """Refuse bad options and a missing source; returns (max_seq, note). The output path is
    llamaport.atomic.check_output's job (what --overwrite may replace).

    max_seq None means "the default": the smaller of 4096 and what the model supports, resolved here when the
    config can be read without torch (Hugging Face folders), else None (resolve it with `resolve_max_seq` once
    the checkpoint is open). `note` says what default was chosen, for the user.
    """
    if target not in TARGETS:
        raise LlamaportError(f"--target {target!r} does not exist; use one of {', '.join(TARGETS)}")
    if dtype not in DTYPES:
        raise LlamaportError(f"--dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if task not in TASKS:
        raise LlamaportError(f"--task {task!r} is not supported; use one of {', '.join(TASKS)}")
    if logits not in LOGITS:
        raise LlamaportError(f"--logits {logits!r} is not supported; use one of {', '.join(LOGITS)}")
    if not _is_int(max_batch) or max_batch < 1:
        raise LlamaportError(f"--max-batch must be an integer of at least 1, got {max_batch!r}")
    if max_seq is not None and (not _is_int(max_seq) or max_seq < MIN_MAX_SEQ):
        raise LlamaportError(
            f"--max-seq must be an integer of at least {MIN_MAX_SEQ} (export verification runs a prompt and 5 "
            f"decode steps through the cache), got {max_seq!r}"
        )
    src_path = Path(src)
    if not src_path.exists():
        raise CheckpointError(f"{src_path}: no such file or folder")
    config = read_config_cheaply(src_path)
    if config is None:
        return max_seq, None
    return resolve_max_seq(max_seq, config)


def check_export_options(src, options) -> None:
    """The same checks for an `ExportOptions` (what `export_engine` calls first)."""
    check_export_request(src, target=options.target, dtype=options.dtype, max_seq=options.max_seq,
                         max_batch=options.max_batch, logits=options.logits, task=options.task)


def read_config_cheaply(src: Path):
    """The LlamaConfig when it can be read without torch (a Hugging Face folder's config.json), else None.

    GGUF metadata and Meta params.json are turned into a config by loaders that import torch today.
    """
    from llamaport.models.config import LlamaConfig

    if src.is_dir() and (src / "config.json").exists() and not (src / "params.json").exists():
        return LlamaConfig.from_json(src / "config.json")
    return None


def resolve_max_seq(max_seq: int | None, config) -> tuple[int, str | None]:
    """(max_seq to export, a note when the default was lowered); refuses more positions than the model has."""
    limit = config.max_supported_positions()
    if max_seq is None:
        if limit >= DEFAULT_MAX_SEQ:
            return DEFAULT_MAX_SEQ, None
        if limit < MIN_MAX_SEQ:
            raise LlamaportError(f"this model supports only {limit} positions; export needs at least {MIN_MAX_SEQ}")
        return limit, (f"note: --max-seq not given; using {limit}, the most positions this model supports "
                       f"(max_position_embeddings{' with rope_scaling' if config.rope_scaling else ''})")
    if max_seq > limit:
        hint = "" if config.rope_scaling else " and has no rope_scaling to extend it"
        raise LlamaportError(
            f"--max-seq {max_seq} exceeds the {limit} positions this model supports{hint}; "
            f"use --max-seq {limit} or less"
        )
    return max_seq, None
