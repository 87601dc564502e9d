"""`engines.toml`: which engines to build from which checkpoints, and what each must keep.

Parsed once, here, into typed entries (one per point of each `[[engines]]` block's matrix). Every unknown key and
every bad value is one LlamaportError that names the file and the key, so a typo never silently builds the wrong
thing. Every key is documented in ci/engines.example.toml.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (setup.py installs it there)
    import tomli as tomllib

from llamaport.enginedir import CheckThresholds, DType, LogitsMode, Name, Target, thresholds
from llamaport.errors import LlamaportError
from llamaport.export_options import MIN_MAX_SEQ

SPEC_VERSION = 1


class Quant(Name):
    """Weight quantization on top of `dtype`: none, or weight-only int4 (`export --quant int4`, RTN defaults)."""

    NONE = "none"
    INT4 = "int4"


class Device(Name):
    CPU = "cpu"
    CUDA = "cuda"


class Runner(Name):
    """Which CI runner an entry needs: any CPU machine, or one with a CUDA GPU (and TensorRT for trt)."""

    CPU = "cpu"
    GPU = "gpu"


GATE_METRICS = tuple(f.name for f in dataclasses.fields(CheckThresholds))  # max_abs_diff, cosine, kl, top1, ...
LOWER_IS_BETTER = CheckThresholds.LOWER_IS_BETTER
SPEED_METRICS = ("decode_tokens_per_s", "prefill_tokens_per_s")  # floors: measured must be at least this
AXES = ("source", "target", "dtype", "quant", "max_seq", "max_batch", "device")
DEFAULT_NAME = "{source}-{target}-{dtype}-s{max_seq}-b{max_batch}"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    sha256: str | None  # declared in the spec: checked against the file before anything is built from it


@dataclass(frozen=True)
class ExportSettings:
    """What decides the engine directory's bytes (with the source and the llamaport version): the cache key."""

    target: Target
    dtype: DType
    quant: Quant
    max_seq: int
    max_batch: int
    logits: LogitsMode

    def key_dict(self) -> dict:
        return {f.name: str(getattr(self, f.name)) if isinstance(getattr(self, f.name), Name) else getattr(self, f.name)
                for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Entry:
    name: str
    index: int  # position in the spec: reports list entries in this order however they were run
    source: Source
    export: ExportSettings
    device: Device
    gates: dict[str, float]  # every accuracy metric's bound: the spec's, else the threshold table's
    speed_floors: dict[str, float]

    @property
    def runner(self) -> Runner:
        return Runner.GPU if self.export.target.is_tensorrt or self.device is Device.CUDA else Runner.CPU


@dataclass(frozen=True)
class CheckSettings:
    prompts: tuple[str, ...] | None  # None: `llamaport check`'s built-in prompts
    text: str | None  # None: its built-in perplexity text
    greedy_tokens: int = 16

    def key_dict(self) -> dict:
        return {"prompts": list(self.prompts) if self.prompts else None, "text": self.text,
                "greedy_tokens": self.greedy_tokens}


@dataclass(frozen=True)
class BenchSettings:
    prompt_len: int = 128
    new_tokens: int = 64
    batch: int = 1
    repeats: int = 3


@dataclass(frozen=True)
class BaselinePolicy:
    """How far an engine may move against a `--baseline` report before the run fails."""

    max_speed_loss: float = 0.10  # fraction of the baseline's decode/prefill tokens/s an engine may lose
    # An accuracy metric may move toward its gate by this fraction of the gate's allowed error (the bound for
    # lower-is-better metrics, 1 - bound for the others): small enough to catch a real regression long before
    # the gate does, large enough for the rounding noise of a rebuilt fp32 engine (~5e-5 against a 1e-3 gate).
    accuracy_tolerance: float = 0.25

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PipelineSpec:
    path: Path
    sources: dict[str, Source]
    entries: tuple[Entry, ...]
    check: CheckSettings
    bench: BenchSettings
    baseline: BaselinePolicy

    def select(self, names: list[str] | tuple[str, ...] | None) -> list[Entry]:
        """The entries called `names` (all when none given), in spec order; an unknown name is an error."""
        if not names:
            return list(self.entries)
        known = {e.name: e for e in self.entries}
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; entries: {', '.join(known)}"
                raise LlamaportError(f"--entry {name!r} is not an entry of {self.path}{hint}")
        return [e for e in self.entries if e.name in set(names)]


class _Reader:
    """Typed access to the parsed TOML; each problem is one error naming the file and the dotted key."""

    def __init__(self, file: Path):
        self.file = file

    def fail(self, key: str, problem: str) -> LlamaportError:
        return LlamaportError(f"{self.file}: key '{key}': {problem}")

    def table(self, value: Any, key: str, known: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {_show(value)}")
        for name in value:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
                where = f"{key}.{name}" if key else name
                raise LlamaportError(f"{self.file}: unknown key '{where}'; {hint}")
        return value

    def integer(self, value: Any, key: str, low: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise self.fail(key, f"must be an integer >= {low}, not {_show(value)}")
        return value

    def number(self, value: Any, key: str, low: float = 0.0, high: float | None = None, above: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            ok = (value > low if above else value >= low) and (high is None or value <= high)
        if not ok:
            rule = f"{'>' if above else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise self.fail(key, f"must be a number {rule}, not {_show(value)}")
        return float(value)

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, not {_show(value)}")
        return value

    def name(self, kind: type[Name], value: Any, key: str):
        try:
            return kind(value)
        except ValueError:
            raise self.fail(key, f"{_show(value)} is not one of {', '.join(kind.choices())}") from None

    def axis(self, value: Any, key: str) -> list:
        """An axis value is one value or a non-empty list of distinct values."""
        values = value if isinstance(value, list) else [value]
        if not values:
            raise self.fail(key, "must not be an empty list")
        if len({repr(v) for v in values}) != len(values):
            raise self.fail(key, f"lists a value twice: {_show(value)}")
        return values

    def path(self, value: Any, key: str) -> Path:
        """Expand ${VAR} and ~; a relative path is relative to the spec file's folder."""
        text = self.string(value, key)

        def expand(match: re.Match) -> str:
            if match.group(1) not in os.environ:
                raise self.fail(key, f"uses ${{{match.group(1)}}}, which is not set in the environment; set it or "
                                     "write the path out")
            return os.environ[match.group(1)]

        path = Path(_VAR.sub(expand, text)).expanduser()
        return path if path.is_absolute() else (self.file.parent / path)


def _show(value: Any) -> str:
    return repr(value)[:60]


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate an engines.toml."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LlamaportError(f"{path}: no such file; write one like ci/engines.example.toml") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LlamaportError(f"cannot read {path} ({getattr(e, 'strerror', None) or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise LlamaportError(f"{path} is not valid TOML: {e}") from None
    return parse_spec(data, path)


def parse_spec(data: dict, path: Path) -> PipelineSpec:
    r = _Reader(Path(path))
    r.table(data, "", ("version", "sources", "engines", "check", "bench", "baseline"))
    version = data.get("version", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise r.fail("version", f"{_show(version)} is not a spec version this llamaport reads ({SPEC_VERSION})")
    sources = _sources(r, data.get("sources"))
    check = _check(r, data.get("check", {}))
    bench = _bench(r, data.get("bench", {}))
    baseline = _baseline(r, data.get("baseline", {}))
    blocks = data.get("engines")
    if not isinstance(blocks, list) or not blocks:
        raise r.fail("engines", "must be one or more [[engines]] tables (the build matrix)")
    entries: list[Entry] = []
    seen: dict[str, str] = {}
    for i, block in enumerate(blocks):
        for entry in _block(r, block, f"engines[{i}]", sources, len(entries)):
            if entry.name in seen:
                raise r.fail(f"engines[{i}].name", f"gives the entry name {entry.name!r} again (first from "
                                                   f"{seen[entry.name]}); put {{target}}, {{dtype}}... in the name")
            seen[entry.name] = f"engines[{i}]"
            _fits(r, entry, bench, f"engines[{i}]")
            entries.append(entry)
    return PipelineSpec(Path(path), sources, tuple(entries), check, bench, baseline)


def _sources(r: _Reader, value: Any) -> dict[str, Source]:
    if not isinstance(value, dict) or not value:
        raise r.fail("sources", "names no checkpoint; add a [sources.NAME] table with the checkpoint's path")
    out = {}
    for name, item in value.items():
        key = f"sources.{name}"
        if not _NAME.fullmatch(name):
            raise r.fail(key, "source names may use letters, digits, '.', '_' and '-' only")
        item = r.table(item, key, ("path", "sha256"))
        if "path" not in item:
            raise r.fail(f"{key}.path", "is missing: the checkpoint (Hugging Face folder, Meta folder or .gguf)")
        sha = item.get("sha256")
        if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
            raise r.fail(f"{key}.sha256", f"must be 64 hex digits, not {_show(sha)}")
        out[name] = Source(name, r.path(item["path"], f"{key}.path"), sha.lower() if sha else None)
    return out


def _check(r: _Reader, value: Any) -> CheckSettings:
    table = r.table(value, "check", ("prompts", "text", "greedy_tokens"))
    prompts = table.get("prompts")
    if prompts is not None:
        if not isinstance(prompts, list) or not prompts:
            raise r.fail("check.prompts", "must be a non-empty list of strings")
        prompts = tuple(r.string(p, f"check.prompts[{i}]") for i, p in enumerate(prompts))
    text = r.string(table["text"], "check.text") if "text" in table else None
    return CheckSettings(prompts, text, r.integer(table.get("greedy_tokens", 16), "check.greedy_tokens", 1))


def _bench(r: _Reader, value: Any) -> BenchSettings:
    table = r.table(value, "bench", tuple(f.name for f in dataclasses.fields(BenchSettings)))
    defaults = BenchSettings()
    lows = {"prompt_len": 1, "new_tokens": 2, "batch": 1, "repeats": 1}  # decode speed needs a step after the first
    return BenchSettings(**{k: r.integer(table.get(k, getattr(defaults, k)), f"bench.{k}", low)
                            for k, low in lows.items()})


def _baseline(r: _Reader, value: Any) -> BaselinePolicy:
    table = r.table(value, "baseline", ("max_speed_loss", "accuracy_tolerance"))
    d = BaselinePolicy()
    return BaselinePolicy(
        max_speed_loss=r.number(table.get("max_speed_loss", d.max_speed_loss), "baseline.max_speed_loss", 0.0, 1.0),
        accuracy_tolerance=r.number(table.get("accuracy_tolerance", d.accuracy_tolerance),
                                    "baseline.accuracy_tolerance", 0.0),
    )


def _block(r: _Reader, block: Any, key: str, sources: dict[str, Source], start: int) -> list[Entry]:
    """One [[engines]] table: the product of its axes, each point one entry."""
    block = r.table(block, key, ("name", *AXES, "logits", "gates", "speed"))
    if "source" not in block:
        raise r.fail(f"{key}.source", f"is missing; name one of the sources: {', '.join(sources)}")
    parse_axis = {
        "source": lambda v, k: sources[v] if v in sources else _unknown_source(r, v, k, sources),
        "target": lambda v, k: r.name(Target, v, k),
        "dtype": lambda v, k: r.name(DType, v, k),
        "quant": lambda v, k: r.name(Quant, v, k),
        "max_seq": lambda v, k: r.integer(v, k, MIN_MAX_SEQ),
        "max_batch": lambda v, k: r.integer(v, k, 1),
        "device": lambda v, k: r.name(Device, v, k),
    }
    defaults = {"target": "onnx", "dtype": "fp32", "quant": "none", "max_seq": 4096, "max_batch": 1, "device": "cpu"}
    axes = {}
    for axis in AXES:
        raw = r.axis(block.get(axis, defaults.get(axis)), f"{key}.{axis}")
        axes[axis] = [parse_axis[axis](v, f"{key}.{axis}") for v in raw]
    logits = r.name(LogitsMode, block.get("logits", "last"), f"{key}.logits")
    overrides = r.table(block.get("gates", {}), f"{key}.gates", GATE_METRICS)
    for metric, bound in overrides.items():
        r.number(bound, f"{key}.gates.{metric}", 0.0, None if metric in LOWER_IS_BETTER else 1.0)
    floors = r.table(block.get("speed", {}), f"{key}.speed", SPEED_METRICS)
    floors = {m: r.number(v, f"{key}.speed.{m}", 0.0, above=True) for m, v in floors.items()}
    template = r.string(block.get("name", DEFAULT_NAME), f"{key}.name")
    entries = []
    for point in itertools.product(*(axes[a] for a in AXES)):
        values = dict(zip(AXES, point))
        name = _entry_name(r, template, values, f"{key}.name", explicit="name" in block)
        export = ExportSettings(values["target"], values["dtype"], values["quant"], values["max_seq"],
                                values["max_batch"], logits)
        gates = {**_default_gates(export.dtype, export.quant), **{m: float(v) for m, v in overrides.items()}}
        entries.append(Entry(name, start + len(entries), values["source"], export, values["device"], gates, floors))
    return entries


def _unknown_source(r: _Reader, value: Any, key: str, sources: dict[str, Source]):
    raise r.fail(key, f"{_show(value)} is not one of the sources: {', '.join(sources)}")


def _entry_name(r: _Reader, template: str, values: dict, key: str, explicit: bool) -> str:
    fields = {a: (v.name if isinstance(v, Source) else str(v)) for a, v in values.items()}
    try:
        name = template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise r.fail(key, f"{template!r} uses {e}; it may use {{{'}, {'.join(AXES)}}}") from None
    if not explicit:  # the default names mention quantization and device only where they are not the default
        name += f"-{fields['quant']}" if values["quant"] is not Quant.NONE else ""
        name += f"-{fields['device']}" if values["device"] is not Device.CPU else ""
    if not _NAME.fullmatch(name):
        raise r.fail(key, f"gives {name!r}; entry names may use letters, digits, '.', '_' and '-' only")
    return name


def _default_gates(dtype: DType, quant: Quant) -> dict[str, float]:
    """The engine-directory threshold table's `check` row for this precision (int4 adds its own row there)."""
    return dataclasses.asdict(thresholds(dtype, {"bits": 4} if quant is Quant.INT4 else None).check)


def _fits(r: _Reader, entry: Entry, bench: BenchSettings, key: str) -> None:
    """The benchmark must fit every engine it runs on: refused here, before hours of building."""
    if bench.prompt_len + bench.new_tokens > entry.export.max_seq:
        raise r.fail("bench.prompt_len", f"{bench.prompt_len} + bench.new_tokens {bench.new_tokens} exceed "
                                         f"{key}.max_seq {entry.export.max_seq} of entry {entry.name!r}")
    if bench.batch > entry.export.max_batch:
        raise r.fail("bench.batch", f"{bench.batch} exceeds {key}.max_batch {entry.export.max_batch} of entry "
                                    f"{entry.name!r}")
