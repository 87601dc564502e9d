"""The engine directory's format, in one place: typed option names, file names, graph input/output names, the
manifest (validated when read, written by the exporter), the accuracy thresholds every precision is held to, and
the checks that tell a damaged or edited engine directory from a good one.

The exporter writes through this module, the runtime reads through it, and the TensorRT builder and the pipeline
build on it. It imports neither torch nor onnx (nor numpy), so the base runtime install and the CLI's option
parsing can use it.

Format versions (`manifest.json` "format_version"):
  1  {format, format_version, source, task, target, dtype, max_seq, max_batch, logits, tokenizer, config,
     inputs, outputs, producer, files, verification}; `files` maps each file name to its sha256 (hex).
  2  As 1, but `files` maps each file name to {"sha256": hex, "bytes": size}: the sizes let every open check that
     no file is truncated or swapped without hashing gigabytes (hashes are checked by `check` and `verify=True`).
Version 1 manifests are still read: their files are checked for presence (no sizes) and by sha256 with verify.
A manifest from a newer version is refused: its meaning may have changed in ways this reader cannot know.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Iterator, TypeVar

from llamaport.errors import LlamaportError

FORMAT = "llamaport-engine"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

# ---------------------------------------------------------------------------------------------------- file names
MANIFEST = "manifest.json"
GRAPH = "model.onnx"
GRAPH_DATA = "model.onnx.data"  # external weights of GRAPH, in the layout ONNX Runtime and TensorRT both read
TRT_ENGINE = "model.engine"  # a serialized TensorRT engine built from a --target trt export
# Manifest key `llamaport build` adds (plugins/trt_build.py writes it, runtime/backends/tensorrt_backend.py checks
# it): {tensorrt_version, compute_capability, plugins, plugin_version, build_options}.
TRT_BUILD = "tensorrt"
# Version of llamaport's TensorRT plugin implementations (plugins/tensorrt_plugins.py). An engine carries its
# compiled kernels, but one built with other kernels is refused and rebuilt, so every engine runs the kernels this
# llamaport was tested with. Bump it whenever an AOT kernel's behaviour changes.
TRT_PLUGIN_VERSION = "1"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")
TOKENIZER_MODELS = ("tokenizer.json", "tokenizer.model")  # either one makes an engine able to take text

REFETCH = "re-copy the engine directory or re-export it"


class EngineDirError(LlamaportError):
    """An engine directory is damaged, incomplete, edited, or from a newer llamaport."""


# ---------------------------------------------------------------------------------------------------- typed names
class Name(str, Enum):
    """An option value with a fixed set of spellings; `str(x)` and f-strings give the spelling itself."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def choices(cls) -> list[str]:
        """The spellings, in declaration order: what the CLI offers."""
        return [member.value for member in cls]


class Target(Name):
    ONNX = "onnx"  # standard ops, opset 24
    ORT = "ort"  # ONNX Runtime's fused contrib ops
    TRT = "trt"  # TensorRT plugin nodes
    TRT_NATIVE = "trt-native"  # TensorRT 11's own attention / KV-cache-update ops (no plugin)

    @property
    def is_tensorrt(self) -> bool:
        """Graphs only TensorRT runs (`llamaport build` turns them into TRT_ENGINE)."""
        return self in (Target.TRT, Target.TRT_NATIVE)


class DType(Name):
    """The graph's floating-point dtype (weights, activations and KV cache; logits are always float32)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    @property
    def numpy_name(self) -> str:
        """How NumPy (and manifest `inputs`/`outputs` dtypes) spell it."""
        return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[self.value]


class Task(Name):
    CAUSAL_LM = "causal-lm"
    SEQUENCE_CLASSIFICATION = "sequence-classification"


class LogitsMode(Name):
    LAST = "last"  # (B, 1, V): each row's last real token (input_lengths - 1)
    ALL = "all"  # (B, S, V): every position


class BackendName(Name):
    AUTO = "auto"  # tensorrt for trt engines, onnxruntime for the others, eager for a checkpoint
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    EAGER = "eager"


N = TypeVar("N", bound=Name)


def parse(kind: type[N], value: Any, flag: str) -> N:
    """`value` as a `kind` member; anything else is one LlamaportError naming `flag` and the choices."""
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except (ValueError, TypeError):
        raise LlamaportError(f"{flag} {value!r} does not exist; use one of {', '.join(kind.choices())}") from None


# ---------------------------------------------------------------------------------------------------- graph names
INPUT_IDS = "input_ids"  # (B, S) int64
PAST_LENGTHS = "past_lengths"  # (B,) int64: tokens already in each row's cache
INPUT_LENGTHS = "input_lengths"  # (B,) int64: real tokens per right-padded row (logits="last" graphs only)
LOGITS = "logits"  # (B, 1, V) or (B, S, V) float32; (B, num_labels) for sequence classification
CACHE_KINDS = ("key", "value")
_CACHE_NAME = re.compile(r"^(past|present)\.(\d+)\.(key|value)$")


def past_name(layer: int, kind: str) -> str:
    """Cache input of `layer`: (B, H_kv, S_max, D)."""
    return f"past.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    """Cache output of `layer`; a runtime binds it to the same buffer as `past_name(layer, kind)`."""
    return f"present.{layer}.{kind}"


def cache_names(num_layers: int, prefix: str = "past") -> list[str]:
    """past.0.key, past.0.value, past.1.key, ... (or present.*), the order the graph declares them in."""
    name = {"past": past_name, "present": present_name}[prefix]
    return [name(i, kind) for i in range(num_layers) for kind in CACHE_KINDS]


def is_past_name(name: str) -> bool:
    match = _CACHE_NAME.match(name)
    return bool(match) and match.group(1) == "past"


def present_for(past: str) -> str:
    """The output bound to cache input `past` (past.3.value -> present.3.value)."""
    match = _CACHE_NAME.match(past)
    if not match or match.group(1) != "past":
        raise ValueError(f"{past!r} is not a cache input name")
    return present_name(int(match.group(2)), match.group(3))


def input_names(num_layers: int, task: Task | str = Task.CAUSAL_LM,
                logits: LogitsMode | str = LogitsMode.LAST) -> list[str]:
    if Task(task) is Task.SEQUENCE_CLASSIFICATION:
        return [INPUT_IDS]
    lengths = [INPUT_LENGTHS] if LogitsMode(logits) is LogitsMode.LAST else []
    return [INPUT_IDS, PAST_LENGTHS, *lengths, *cache_names(num_layers, "past")]


def output_names(num_layers: int, task: Task | str = Task.CAUSAL_LM) -> list[str]:
    if Task(task) is Task.SEQUENCE_CLASSIFICATION:
        return [LOGITS]
    return [LOGITS, *cache_names(num_layers, "present")]


# ---------------------------------------------------------------------------------------------------- thresholds
class CosineOf(Name):
    """What `check`'s per-position cosine compares (the bound is on the worst position)."""

    LOGITS = "logits"  # the logit vectors as they are
    # Each less its mean over the vocabulary. Softmax ignores a constant added to a row, but the raw cosine does
    # not: a shift the weights' rounding puts on every logit drags it toward 0 where the logits' mean is near 0.
    CENTERED_LOGITS = "centered-logits"


@dataclass(frozen=True)
class CheckThresholds:
    """`llamaport check`'s bounds: engine vs fp32 eager over prompts, greedy tokens and a perplexity text."""

    max_abs_diff: float
    cosine: float
    kl: float
    top1: float
    top5: float
    greedy_match: float
    ppl_rel_delta: float
    LOWER_IS_BETTER: ClassVar[frozenset[str]] = frozenset({"max_abs_diff", "kl", "ppl_rel_delta"})

    def failures(self, worst: Mapping[str, float]) -> list[str]:
        """One 'name value > bound' line per metric of `worst` beyond its bound."""
        out = []
        for name, value in worst.items():
            bound = getattr(self, name)
            lower = name in self.LOWER_IS_BETTER
            if (value > bound) if lower else (value < bound):
                out.append(f"{name} {value:.4g} {'>' if lower else '<'} {bound:g}")
        return out


@dataclass(frozen=True)
class Thresholds:
    """Everything one precision is held to, by export verification and by `check`."""

    # Export verification: max |logit diff| of the graph against fp32 eager over the verification schedule...
    verify_max_abs_logit_diff: float
    # ...or this fraction of the largest |logit| where that is more: fp32 rounding grows with the logits'
    # magnitude. Measured on SmolLM2 (|logits| up to ~25): transformers vs our eager 4e-5; fused ONNX Runtime
    # kernels, which sum in another order, up to 1.1e-4. Real mistakes (a wrong rotary, one damaged weight) show
    # as 1e-2 and more.
    verify_relative_logit_diff: float
    # ...and at least this top-1 agreement with eager on every step (fp16/bf16 must pick the same tokens).
    verify_min_top1_agreement: float
    check: CheckThresholds
    check_cosine_of: CosineOf = CosineOf.LOGITS  # what check.cosine measures for this precision

    def verify_tolerance(self, largest_abs_logit: float) -> float:
        """The max |logit diff| export verification allows for logits whose largest magnitude is given."""
        return max(self.verify_max_abs_logit_diff, self.verify_relative_logit_diff * largest_abs_logit)


# One table, keyed by the graph dtype. Quantized precisions (int4 weights) add their own rows here.
THRESHOLDS: dict[DType, Thresholds] = {
    DType.FP32: Thresholds(1e-4, 1e-5, 0.0, CheckThresholds(
        max_abs_diff=1e-3, cosine=0.99999, kl=1e-5, top1=1.0, top5=1.0, greedy_match=1.0, ppl_rel_delta=1e-3)),
    DType.FP16: Thresholds(0.5, 0.0, 1.0, CheckThresholds(
        max_abs_diff=1.0, cosine=0.999, kl=5e-3, top1=0.95, top5=0.98, greedy_match=0.75, ppl_rel_delta=0.02)),
    DType.BF16: Thresholds(1.0, 0.0, 1.0, CheckThresholds(
        max_abs_diff=2.0, cosine=0.995, kl=2e-2, top1=0.9, top5=0.95, greedy_match=0.5, ppl_rel_delta=0.05)),
}


# Weight-only int4 engines (manifest "quantization" {"bits": 4, ...}): verification compares the graph with the
# eager model running the same dequantized weights, so the gap is the activations' int8 rounding (MatMulNBits
# accuracy_level 4): measured 0.5-0.9 max |logit diff| on SmolLM2, with near-tied tokens allowed to flip. `check`
# compares with the unquantized model, so its bounds measure quantization quality. Measured with check's prompts
# and text on SmolLM2-135M ort engines (max_seq 512, int8 head unless said) as (cosine, KL, top-1, top-5, ppl
# delta, max|d|), worst prompt: sound: GGUF Q4_1 codes (0.998, 0.009, 0.71, 1.0, +0.4%, 1.4), RTN g32 (0.776, 1.04,
# 0.43, 0.8, +27%, 16.6), RTN g64 (0.768, 0.67, 0.43, 0.8, +36%, 15.3), RTN int4 head (0.765, 1.19, 0.40, 0.6, +43%,
# 18.8), GPTQ g64 (0.922, 0.26, 0.57, 1.0, +20%, 9.5); broken, from RTN g32: one layer's codes shuffled (0.47, 2.90,
# 0.0, 0.29, +419%, 26.8), one layer's nibbles swapped (0.03, 2.94, 0.0, 0.4, +184%, 44.1), every zero point +1
# (-0.03, 17.3, 0.0, 0.0, huge, 41.2). Every sound engine passes each bound with margin (closest: KL 1.19 of
# 1.8) and every broken one fails at least five. The cosine is of centered logits: int4 rounding shifts all of a
# position's logits by 3-6, which softmax ignores but which took the raw cosine to -0.28 (RTN) and 0.51 (GPTQ) on
# sound engines; centered, the worst position is the first token's (~0.77 for every RTN variant). RTN
# re-quantizing this already-4-bit checkpoint costs about what damaging one layer does (one down_proj's scales x2:
# 0.775, 1.30, 0.2, 0.8, +45%, 18.6; one o_proj negated: 0.772, 1.14, 0.14, 0.8, +25%, 16.5), so damage that
# subtle is not reliably caught (the first passes; the second fails top-1 alone, on 1 token of 7). greedy_match
# stays 0: even the near-lossless GGUF engine flips a near-tied greedy token.
INT4 = Thresholds(1.5, 0.05, 0.8, CheckThresholds(
    max_abs_diff=24.0, cosine=0.65, kl=1.8, top1=0.2, top5=0.4, greedy_match=0.0, ppl_rel_delta=0.8),
    CosineOf.CENTERED_LOGITS)


def thresholds(precision: DType | str, quantization: Mapping | None = None) -> Thresholds:
    """The bounds of one engine precision: its graph dtype, or its weight quantization when it has one."""
    if quantization and quantization.get("bits") == 4:
        return INT4
    key = precision if precision in THRESHOLDS else parse(DType, precision, "--dtype")
    return THRESHOLDS[key]


# ---------------------------------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: dims are ints or symbolic names ("batch", "sequence")."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str  # NumPy spelling: float32, float16, bfloat16, int64

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    bytes: int | None  # None in format version 1 manifests


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class Manifest(Mapping):
    """A validated `manifest.json`: typed fields, and read-only mapping access to the JSON as written."""

    path: Path
    data: dict = field(repr=False)
    format_version: int
    task: Task
    target: Target
    dtype: DType
    max_seq: int
    max_batch: int
    logits: LogitsMode
    tokenizer: str | None
    source: str | None
    config: dict
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: dict[str, FileRecord]
    verification: dict | None
    quantization: dict | None = None

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def num_layers(self) -> int:
        return self.config["num_hidden_layers"]

    @property
    def vocab_size(self) -> int:
        return self.config["vocab_size"]

    @property
    def num_key_value_heads(self) -> int:
        return self.config.get("num_key_value_heads") or self.config["num_attention_heads"]

    @property
    def head_dim(self) -> int:
        return self.config.get("head_dim") or self.config["hidden_size"] // self.config["num_attention_heads"]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


class _Reader:
    """Field-by-field validation of one manifest's JSON, each problem one error naming the file and the key."""

    def __init__(self, data: Any, path: Path):
        self.data, self.path = data, path

    def fail(self, problem: str) -> EngineDirError:
        return EngineDirError(f"{self.path}: {problem}; {REFETCH}")

    def get(self, key: str, types: type | tuple, what: str, optional: bool = False, within: dict | None = None):
        where = self.data if within is None else within
        label = key if within is None else f"config.{key}"
        if key not in where:
            if optional:
                return None
            raise self.fail(f"missing '{label}'")
        value = where[key]
        is_bool = isinstance(value, bool)  # bool is an int to isinstance, never to a manifest
        if (value is None and optional) or (isinstance(value, types) and (not is_bool or bool in _tuple(types))):
            return value
        raise self.fail(f"'{label}' must be {what}, not {json.dumps(value)[:60]}")

    def positive(self, key: str, within: dict | None = None, optional: bool = False) -> int | None:
        value = self.get(key, int, "a positive integer", optional, within)
        if value is not None and value < 1:
            raise self.fail(f"'{key if within is None else 'config.' + key}' must be a positive integer, not {value}")
        return value

    def name(self, key: str, kind: type[N]) -> N:
        value = self.get(key, str, f"one of {', '.join(kind.choices())}")
        try:
            return kind(value)
        except ValueError:
            raise self.fail(f"'{key}' {value!r} is not one of {', '.join(kind.choices())}") from None

    def tensors(self, key: str) -> tuple[TensorSpec, ...]:
        specs = []
        for item in self.get(key, list, "a list of {name, shape, dtype}"):
            ok = (isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("dtype"), str)
                  and isinstance(item.get("shape"), list)
                  and all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in item["shape"]))
            if not ok:
                raise self.fail(f"'{key}' entry {json.dumps(item)[:80]} is not {{name, shape, dtype}}")
            specs.append(TensorSpec(item["name"], tuple(item["shape"]), item["dtype"]))
        return tuple(specs)

    def files(self, version: int) -> dict[str, FileRecord]:
        records = {}
        for name, entry in self.get("files", dict, "an object of file records").items():
            if not name or "/" in name or "\\" in name or name in (".", "..", MANIFEST):
                raise self.fail(f"'files' lists {name!r}, which is not a file of the engine directory")
            if version == 1 and isinstance(entry, str):
                sha, size = entry, None
            elif version >= 2 and isinstance(entry, dict):
                sha, size = entry.get("sha256"), entry.get("bytes")
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise self.fail(f"'files.{name}.bytes' must be a size in bytes, not {json.dumps(size)}")
            else:
                want = "a sha256" if version == 1 else "{sha256, bytes}"
                raise self.fail(f"'files.{name}' must be {want}, not {json.dumps(entry)[:60]}")
            if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise self.fail(f"'files.{name}' has no valid sha256")
            records[name] = FileRecord(sha, size)
        if GRAPH not in records:
            raise self.fail(f"'files' does not list {GRAPH}")
        return records


def _tuple(types: type | tuple) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def parse_manifest(data: Any, path: Path) -> Manifest:
    """Validate `data` (the parsed JSON of `path`) and return it typed; every problem is one EngineDirError."""
    path = Path(path)
    r = _Reader(data, path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EngineDirError(f"{path} is not a llamaport engine manifest (no \"format\": \"{FORMAT}\"); {REFETCH}")
    version = r.get("format_version", int, "an integer")
    if version > FORMAT_VERSION:
        raise EngineDirError(
            f"{path} has format_version {version}, newer than this llamaport reads (up to {FORMAT_VERSION}); "
            "upgrade llamaport (pip install -U llamaport) or re-export the engine with this version"
        )
    if version not in READABLE_VERSIONS:
        raise r.fail(f"format_version {version} does not exist")
    config = r.get("config", dict, "an object")
    for key in ("vocab_size", "num_hidden_layers", "num_attention_heads"):
        r.positive(key, within=config)
    for key in ("num_key_value_heads", "head_dim", "hidden_size"):
        r.positive(key, within=config, optional=True)
    if config.get("head_dim") is None and config.get("hidden_size") is None:
        raise r.fail("'config' has neither head_dim nor hidden_size")
    manifest = Manifest(
        path=path,
        data=data,
        format_version=version,
        task=r.name("task", Task),
        target=r.name("target", Target),
        dtype=r.name("dtype", DType),
        max_seq=r.positive("max_seq"),
        max_batch=r.positive("max_batch"),
        logits=r.name("logits", LogitsMode),
        tokenizer=r.get("tokenizer", str, "a tokenizer kind or null", optional=True),
        source=r.get("source", str, "a path or null", optional=True),
        config=config,
        inputs=r.tensors("inputs"),
        outputs=r.tensors("outputs"),
        files=r.files(version),
        verification=r.get("verification", dict, "an object or null", optional=True),
        quantization=r.get("quantization", dict, "an object or null", optional=True),
    )
    r.get("producer", dict, "an object", optional=True)
    return manifest


def read_manifest(folder: str | Path) -> Manifest:
    """The validated manifest of engine directory `folder` (or of a manifest.json path)."""
    folder = Path(folder)
    path = folder if folder.name == MANIFEST and folder.is_file() else folder / MANIFEST
    if not path.is_file():
        if (folder / GRAPH).exists():
            raise EngineDirError(f"{folder} has {GRAPH} but no {MANIFEST}; {REFETCH}")
        raise EngineDirError(f"{folder} is not an engine directory (no {MANIFEST}); create one with 'llamaport export'")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineDirError(f"{path} is not valid JSON ({e}); {REFETCH}") from None
    except OSError as e:
        raise EngineDirError(f"cannot read {path} ({e.strerror})") from None
    return parse_manifest(data, path)


def manifest_dict(*, source: str | None, config: dict, target: Target | str, task: Task | str, dtype: DType | str,
                  max_seq: int, max_batch: int, logits: LogitsMode | str, tokenizer: str | None,
                  inputs: list[dict], outputs: list[dict], producer: dict, files: dict,
                  verification: dict | None, quantization: dict | None = None) -> dict:
    """The manifest's JSON object, keys in their written order (no timestamps: same export, same bytes).

    `quantization`: for weight-quantized engines, {bits, method, group_size, symmetric, lm_head, ...}.
    """
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": source,  # the checkpoint, for `llamaport check`'s default reference
        "task": parse(Task, task, "--task").value,
        "target": parse(Target, target, "--target").value,
        "dtype": parse(DType, dtype, "--dtype").value,
        "max_seq": max_seq,
        "max_batch": max_batch,
        "logits": parse(LogitsMode, logits, "--logits").value,
        "tokenizer": tokenizer,
        "config": config,
        "inputs": inputs,
        "outputs": outputs,
        "producer": producer,
        "files": files,
        "verification": verification,
        **({"quantization": quantization} if quantization else {}),
    }


def file_records(folder: Path) -> dict[str, dict]:
    """{name: {sha256, bytes}} of every file in `folder` but the manifest, sorted by name."""
    return {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != MANIFEST}


def draft_manifest(folder: str | Path, **fields: Any) -> Manifest:
    """The manifest of `folder` recording every file now in it, validated but not yet written.

    `fields` are manifest_dict's, less `files`. Export opens its engine through the runtime with the draft (to
    verify it) before `save_manifest` writes it with the result.
    """
    folder = Path(folder)
    data = manifest_dict(**fields, files=file_records(folder))
    return parse_manifest(json.loads(json.dumps(data)), folder / MANIFEST)


def save_manifest(draft: Manifest, **updates: Any) -> dict:
    """Write `draft` (with top-level `updates`, e.g. verification=...) to its path; returns the JSON object.

    What is written is read back through the validating reader, so an exporter cannot write a manifest the runtime
    would refuse.
    """
    data = {**draft.data, **updates}
    parse_manifest(json.loads(json.dumps(data)), draft.path)
    draft.path.write_text(json.dumps(data, indent=2) + "\n")
    return data


# ---------------------------------------------------------------------------------------------------- directory
def check_files(manifest: Manifest, hashes: bool = False) -> None:
    """Every listed file present with its recorded size; with `hashes`, also its recorded sha256."""
    folder = manifest.folder
    for name, record in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise EngineDirError(f"{path} is missing; the engine directory is incomplete: {REFETCH}")
        size = path.stat().st_size
        if record.bytes is not None and size != record.bytes:
            raise EngineDirError(f"{path} is {size} bytes but {MANIFEST} records {record.bytes}: the file is "
                                 f"truncated or damaged; {REFETCH}")
    if hashes:  # after every size matched: hashing is the expensive part
        for name, record in manifest.files.items():
            if sha256(folder / name) != record.sha256:
                raise EngineDirError(f"{folder / name} does not match the sha256 recorded in {MANIFEST}: it changed "
                                     f"after export (damaged or edited); {REFETCH}")


def open_engine_dir(folder: str | Path, verify: bool = False) -> Manifest:
    """Read and validate an engine directory's manifest and check its files (sha256 too with `verify`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EngineDirError(f"{folder}: no such engine directory")
    manifest = read_manifest(folder)
    check_files(manifest, hashes=verify)
    return manifest


def expected_signature(manifest: Manifest) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph inputs and outputs the manifest's max_seq, dtype, logits and config imply ("?" = any dim)."""
    if manifest.task is Task.SEQUENCE_CLASSIFICATION:
        return [TensorSpec(INPUT_IDS, ("?", "?"), "int64")], [TensorSpec(LOGITS, ("?", "?"), "float32")]
    cache = ("?", manifest.num_key_value_heads, manifest.max_seq, manifest.head_dim)  # (B, H_kv, S_max, D)
    dtype = manifest.dtype.numpy_name
    scalars = {INPUT_IDS: TensorSpec(INPUT_IDS, ("?", "?"), "int64"),
               PAST_LENGTHS: TensorSpec(PAST_LENGTHS, ("?",), "int64"),
               INPUT_LENGTHS: TensorSpec(INPUT_LENGTHS, ("?",), "int64")}
    inputs = [scalars.get(n) or TensorSpec(n, cache, dtype)
              for n in input_names(manifest.num_layers, manifest.task, manifest.logits)]
    outputs = [TensorSpec(LOGITS, ("?", "?", manifest.vocab_size), "float32")]
    outputs += [TensorSpec(n, cache, dtype) for n in cache_names(manifest.num_layers, "present")]
    return inputs, outputs


def _disagreement(want: TensorSpec, got: TensorSpec) -> str | None:
    if want.dtype != got.dtype:
        return f"dtype {got.dtype}, expected {want.dtype}"
    if len(want.shape) != len(got.shape) or any(
        isinstance(w, int) and w != g for w, g in zip(want.shape, got.shape)
    ):
        return f"shape {list(got.shape)}, expected {list(want.shape)}"
    return None


def check_graph_signature(manifest: Manifest, inputs: list[TensorSpec], outputs: list[TensorSpec],
                          graph: str = GRAPH) -> None:
    """The graph's declared inputs/outputs (from the backend that loaded it) agree with the manifest: both with
    the signature it recorded and with what its max_seq, dtype and config imply. A manifest edited by hand (say
    max_seq 4096 -> 99999) or belonging to another export fails here, not deep inside a run."""
    where = f"{manifest.folder / graph} does not match {manifest.path}"
    got = {s.name: s for s in [*inputs, *outputs]}
    implied_in, implied_out = expected_signature(manifest)
    for role, recorded, implied, declared in (("inputs", manifest.inputs, implied_in, inputs),
                                              ("outputs", manifest.outputs, implied_out, outputs)):
        names = [s.name for s in declared]
        for expected in (list(recorded), implied):
            if [s.name for s in expected] != names:
                missing = [s.name for s in expected if s.name not in names][:3]
                extra = [n for n in names if n not in {s.name for s in expected}][:3]
                raise EngineDirError(f"{where}: graph {role} differ (missing {missing}, unexpected {extra}); {REFETCH}")
            for want in expected:
                problem = _disagreement(want, got[want.name])
                if problem:
                    raise EngineDirError(
                        f"{where}: the graph declares {want.name} with {problem} (max_seq {manifest.max_seq}, "
                        f"dtype {manifest.dtype}, vocab_size {manifest.vocab_size}); the manifest was edited or "
                        f"belongs to another export: {REFETCH}")
