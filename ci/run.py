"""`pipeline run`: for each entry export (reusing a verified cached engine), check against eager and bench; one
record per entry under OUT/entries/, engine directories under OUT/engines/, then the report.

Entries run one after another in this process, or with `jobs` > 1 in that many worker processes
(concurrent.futures; "spawn", since torch's thread pools do not survive fork). Workers split the CPU cores between
them, so speeds measured with jobs > 1 are lower than alone: keep jobs = 1 where speed is gated.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from llamaport.errors import LlamaportError

from . import cache
from .report import (ENGINES, ENTRIES, EXPORTS, build_report, claim_output, load_report, machine, write_atomic,
                     write_report)
from .spec import BenchSettings, CheckSettings, Device, Entry, PipelineSpec, Runner

Say = Callable[[str], None]


@dataclass(frozen=True)
class Job:
    entry: Entry
    out: Path
    source_sha256: str
    check: CheckSettings
    bench: BenchSettings
    threads: int | None  # None: the runtime's default (physical cores)
    quiet: bool  # no per-stage progress bars (worker processes would draw over each other)


def record_path(out: Path, name: str) -> Path:
    return out / ENTRIES / f"{name}.json"


def base_record(entry: Entry) -> dict:
    """What the spec says about an entry: enough for `pipeline report` to judge it without the spec."""
    return {
        "name": entry.name,
        "index": entry.index,
        "source": entry.source.name,
        **entry.export.key_dict(),
        "device": str(entry.device),
        "runner": str(entry.runner),
        "gates": entry.gates,
        "speed_floors": entry.speed_floors,
        "engine_dir": f"{ENGINES}/{entry.name}",
        "status": None,  # "done" | "skipped" | "error"; report.evaluate turns it into passed/failed/skipped
        "skip_reason": None,
        "error": None,
        "cache": None,
        "check": None,
        "bench": None,
        "seconds": {},
        "machine": machine(),
    }


def unmet_requirement(entry: Entry) -> str | None:
    """Why this machine cannot run the entry (it is then reported as skipped, never passed), or None."""
    if entry.export.target.is_tensorrt and importlib.util.find_spec("tensorrt") is None:
        return "TensorRT not installed (it needs a CUDA GPU: run this entry on the GPU runner)"
    if entry.runner is Runner.GPU and _gpu() is None:
        return "no CUDA GPU on this machine"
    if entry.device is Device.CUDA and not entry.export.target.is_tensorrt:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "onnxruntime has no CUDA execution provider (install onnxruntime-gpu)"
    return None


def _gpu() -> str | None:
    """The CUDA GPU's compute capability, or None without one (or without the CUDA runtime to ask)."""
    try:
        from llamaport.gpu import compute_capability

        return compute_capability()
    except Exception:  # no libcudart, no polygraphy, no device: all mean "no usable GPU" here
        return None


def _previous(out: Path, name: str) -> dict | None:
    try:
        return json.loads(record_path(out, name).read_text())
    except (OSError, ValueError):
        return None


def run_entry(job: Job, say: Say) -> dict:
    """Export (or reuse), check (or reuse) and bench one entry; failures are recorded, not raised."""
    entry, out = job.entry, job.out
    record = base_record(entry)
    engine_dir = out / ENGINES / entry.name
    previous = _previous(out, entry.name)
    engine_key = cache.engine_key(entry, job.source_sha256)
    check_key = cache.check_key(entry, engine_key, job.check)
    # Keys are recorded only for what was built and checked: a failed export must not mark the old engine current.
    record["cache"] = {"engine_key": None, "check_key": None, "engine": None, "check": None, "why": None}
    stage = "export"
    try:
        started = time.perf_counter()
        reuse, why = cache.reusable_engine(engine_dir, previous, engine_key)
        if reuse and entry.export.target.is_tensorrt:
            reuse, why = _tensorrt_reusable(engine_dir, why)
        record["cache"].update(engine="reused" if reuse else "built", why=why)
        if not reuse and entry.export.target.is_tensorrt:  # export, then `llamaport build` into the engine dir
            say(f"{entry.name}: export ({why})")
            _export(entry, out / EXPORTS / entry.name, job.quiet)
            stage = "build"
            say(f"{entry.name}: build (TensorRT)")
            _build(entry, out / EXPORTS / entry.name, engine_dir)
        elif not reuse:
            say(f"{entry.name}: export ({why})")
            _export(entry, engine_dir, job.quiet)
        record["cache"]["engine_key"] = engine_key
        record["seconds"]["export"] = time.perf_counter() - started
        say(f"{entry.name}: export {'reused' if reuse else 'done'} ({record['seconds']['export']:.1f} s)")

        stage = "check"
        started = time.perf_counter()
        engine = _open(entry, engine_dir, job.threads)
        prior = (previous or {}).get("check")
        if reuse and prior and (previous.get("cache") or {}).get("check_key") == check_key:
            record["check"], record["cache"]["check"] = prior, "reused"
        else:
            record["check"], record["cache"]["check"] = _check(entry, engine, job.check), "ran"
        record["cache"]["check_key"] = check_key
        record["seconds"]["check"] = time.perf_counter() - started
        worst = record["check"]["worst"]
        say(f"{entry.name}: check {record['cache']['check']}: max|d| {worst['max_abs_diff']:.2e}, "
            f"KL {worst['kl']:.2e}, top-1 {worst['top1']:.3f}, ppl delta {worst['ppl_rel_delta']:.2e}")

        stage = "bench"
        started = time.perf_counter()
        record["bench"] = _bench(engine, engine_dir, job.bench, job.threads)
        record["seconds"]["bench"] = time.perf_counter() - started
        say(f"{entry.name}: bench: prefill {record['bench']['prefill_tokens_per_s']:.0f} tok/s, "
            f"decode {record['bench']['decode_tokens_per_s']:.1f} tok/s")
        record["status"] = "done"
    except LlamaportError as e:
        record["status"], record["error"] = "error", {"stage": stage, "message": str(e)}
    except Exception as e:  # a bug or a broken checkpoint: one entry fails, the others still run
        record["status"] = "error"
        record["error"] = {"stage": stage, "message": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    if record["error"]:
        say(f"{entry.name}: {stage} failed: {record['error']['message']}")
        if stage in ("export", "build"):
            record["cache"]["engine"] = None  # nothing was built
    write_atomic(record_path(out, entry.name), json.dumps(record, indent=2) + "\n")
    gc.collect()
    return record


def _export(entry: Entry, engine_dir: Path, quiet: bool) -> None:
    from llamaport.exporter import ExportOptions, export_engine

    from llamaport.exporter.quant import QuantSpec

    from .spec import Quant

    e = entry.export
    quant = QuantSpec() if e.quant is Quant.INT4 else None
    options = ExportOptions(target=str(e.target), dtype=str(e.dtype), max_seq=e.max_seq, max_batch=e.max_batch,
                            logits=str(e.logits), overwrite=True, quiet=quiet, quant=quant)
    export_engine(entry.source.path, engine_dir, options)  # atomic: a failed export leaves the old directory


def _build(entry: Entry, export_dir: Path, engine_dir: Path) -> None:
    from llamaport.plugins.trt_build import BuildOptions, PluginMode, build_engine

    mode = next(m for m in PluginMode if m.target is entry.export.target)
    build_engine(export_dir, engine_dir, BuildOptions(plugins=mode, overwrite=True))


def _tensorrt_reusable(engine_dir: Path, why: str) -> tuple[bool, str]:
    """A cached TensorRT engine also needs this machine's TensorRT version, GPU and plugin kernels."""
    import tensorrt

    from llamaport.enginedir import read_manifest
    from llamaport.runtime.backends.tensorrt_backend import RuntimeInfo, engine_problems

    problems = engine_problems(read_manifest(engine_dir), RuntimeInfo(tensorrt.__version__, _gpu() or "none"))
    return (False, f"cached engine does not fit this machine: {'; '.join(problems)}") if problems else (True, why)


def _open(entry: Entry, engine_dir: Path, threads: int | None):
    from llamaport.runtime import Engine

    return Engine.open(engine_dir, device=str(entry.device), threads=threads)


def _check(entry: Entry, engine, settings: CheckSettings) -> dict:
    from llamaport.runtime import Engine
    from llamaport.runtime.check import run_check

    reference = Engine.open(entry.source.path, backend="eager", max_seq=engine.max_seq)
    result = run_check(engine, reference, list(settings.prompts) if settings.prompts else None, settings.text,
                       settings.greedy_tokens, str(entry.export.dtype), engine.manifest.get("quantization"))
    return {"worst": result["worst"], "perplexity": result["perplexity"], "prompts": len(result["prompts"])}


def _bench(engine, engine_dir: Path, settings: BenchSettings, threads: int | None) -> dict:
    from llamaport.runtime.bench import run_bench

    result = run_bench(engine, engine_dir, settings.prompt_len, settings.new_tokens, settings.batch,
                       settings.repeats, threads)
    # peak_rss_mb is left out: in a pipeline it is the whole process's peak (export and eager reference included).
    keep = ("prefill_tokens_per_s", "decode_tokens_per_s", "time_to_first_token_s", "roofline_percent", "threads",
            "batch", "prompt_len", "new_tokens")
    return {k: result[k] for k in keep}


def _skipped(entry: Entry, reason: str) -> dict:
    record = base_record(entry)
    record["status"], record["skip_reason"] = "skipped", reason
    return record


def _worker(job: Job, queue) -> dict:
    if job.threads:  # torch reads this when first imported (export, eager reference); ONNX Runtime gets `threads`
        os.environ["OMP_NUM_THREADS"] = str(job.threads)
    return run_entry(job, queue.put)


def run_pipeline(spec: PipelineSpec, out: str | Path, names: list[str] | None = None, jobs: int = 1,
                 baseline: str | Path | None = None, say: Say | None = None) -> dict:
    """Run the selected entries into OUT and write OUT/report.json, report.md and the chart; returns the report."""
    out = Path(out)
    if jobs < 1:
        raise LlamaportError(f"--jobs must be at least 1, got {jobs}")
    entries = spec.select(names)
    baseline_report = load_report(Path(baseline)) if baseline else None
    skipped = {e.name: reason for e in entries if (reason := unmet_requirement(e))}
    runnable = [e for e in entries if e.name not in skipped]
    digests = cache.resolve_sources(list({e.source.name: e.source for e in runnable}.values()), spec.path, True)
    claim_output(out)  # after every check that needs no writing, so a refused run creates nothing
    threads = None
    if jobs > 1:
        from llamaport.runtime.backends.onnxruntime_backend import physical_cores

        threads = max(1, physical_cores() // min(jobs, max(1, len(runnable))))
    work = [Job(e, out, digests[e.source.name], spec.check, spec.bench, threads, quiet=jobs > 1) for e in runnable]
    records = [_skipped(e, skipped[e.name]) for e in entries if e.name in skipped]
    with tqdm(total=len(entries), desc="pipeline", unit="engine", file=sys.stderr) as bar:
        say = say or (lambda line: tqdm.write(line, file=sys.stderr))
        for record in records:
            say(f"{record['name']}: skipped: {record['skip_reason']}")
            bar.update(1)
        if jobs == 1 or len(work) <= 1:
            for job in work:
                records.append(run_entry(job, say))
                bar.update(1)
        else:
            records += _run_parallel(work, jobs, say, bar)
    report = build_report(records, spec.baseline, spec_path=str(spec.path), baseline=baseline_report,
                          baseline_path=str(baseline) if baseline else None)
    write_report(report, out)
    return report


def _run_parallel(work: list[Job], jobs: int, say: Say, bar: tqdm) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    records = []
    with ctx.Manager() as manager, ProcessPoolExecutor(min(jobs, len(work)), mp_context=ctx) as pool:
        queue = manager.Queue()  # progress lines from the workers, printed here above the bar
        futures = {pool.submit(_worker, job, queue): job for job in work}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(queue, say)
            for future in done:
                try:
                    records.append(future.result())
                except Exception as e:  # the worker process died (out of memory, a crash in native code)
                    record = base_record(futures[future].entry)
                    record["status"] = "error"
                    record["error"] = {"stage": "worker", "message": f"{type(e).__name__}: {e}"}
                    records.append(record)
                bar.update(1)
        _drain(queue, say)
    return records


def _drain(queue, say: Say) -> None:
    while not queue.empty():
        say(queue.get())
