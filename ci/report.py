"""The pipeline's report: each entry judged against its gates, speed floors and an optional baseline report, then
written as report.json (versioned, machine-readable), report.md (the table people read, and what failed and why)
and chart.png (decode tokens/s against perplexity delta; needs matplotlib, the `plot` extra).

Judging works on entry records alone, so `pipeline report` can merge the records of many CI runners and reach the
same verdict a single local run would.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

from llamaport.errors import LlamaportError

from .cache import llamaport_version
from .spec import LOWER_IS_BETTER, SPEED_METRICS, BaselinePolicy

FORMAT = "llamaport-pipeline-report"
VERSION = 1
REPORT, MARKDOWN, CHART = "report.json", "report.md", "chart.png"
ENGINES, ENTRIES, EXPORTS = "engines", "entries", "exports"  # per-entry folders of `pipeline run`'s output
PIPELINE_NAMES = frozenset({REPORT, MARKDOWN, CHART, ENGINES, ENTRIES, EXPORTS})


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a temporary sibling, then rename it over `path`: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def machine() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count()}


# ------------------------------------------------------------------------------------------------------ judging
def _failure(kind: str, metric: str, message: str) -> dict:
    return {"kind": kind, "metric": metric, "message": message}


def evaluate(record: dict, base: dict | None, policy: BaselinePolicy) -> tuple[str, list[dict]]:
    """(status, failures) of one entry record: skipped, failed (an error, a gate, a floor, the baseline) or passed."""
    if record.get("skip_reason"):
        return "skipped", []
    if record.get("error"):
        error = record["error"]
        return "failed", [_failure("error", error["stage"], f"{error['stage']} failed: {error['message']}")]
    worst, speed = record["check"]["worst"], record["bench"]
    failures = []
    for metric, bound in record["gates"].items():
        value, lower = worst[metric], metric in LOWER_IS_BETTER
        if (value > bound) if lower else (value < bound):
            failures.append(_failure("gate", metric, f"{metric} {value:.4g} {'>' if lower else '<'} gate {bound:g}"))
    for metric, floor in record["speed_floors"].items():
        if speed[metric] < floor:
            failures.append(_failure("speed", metric, f"{metric} {speed[metric]:.4g} < floor {floor:g}"))
    if base is not None and base.get("check") and base.get("bench"):
        failures += _against_baseline(record, base, policy)
    return ("failed" if failures else "passed"), failures


def _against_baseline(record: dict, base: dict, policy: BaselinePolicy) -> list[dict]:
    failures = []
    worst, before = record["check"]["worst"], base["check"]["worst"]
    for metric, bound in record["gates"].items():
        if metric not in before:
            continue
        lower = metric in LOWER_IS_BETTER
        allowed = policy.accuracy_tolerance * (bound if lower else 1.0 - bound)
        lost = worst[metric] > before[metric] + allowed if lower else worst[metric] < before[metric] - allowed
        if lost:
            failures.append(_failure("baseline-accuracy", metric,
                                     f"lost accuracy: {metric} {worst[metric]:.4g} against baseline "
                                     f"{before[metric]:.4g} (allowed change {allowed:.2g})"))
    for metric in SPEED_METRICS:
        now, then = record["bench"][metric], base["bench"].get(metric)
        if then and now < then * (1.0 - policy.max_speed_loss):
            failures.append(_failure("baseline-speed", metric,
                                     f"{metric} {now:.4g} is {100 * (1 - now / then):.0f}% below baseline {then:.4g} "
                                     f"(at most {100 * policy.max_speed_loss:.0f}% allowed)"))
    return failures


def build_report(records: list[dict], policy: BaselinePolicy, spec_path: str | None = None,
                 baseline: dict | None = None, baseline_path: str | None = None) -> dict:
    """Judge every record (against `baseline`'s entry of the same name, if given) into one report."""
    base_entries = {e["name"]: e for e in (baseline or {}).get("entries", [])}
    entries = []
    for record in sorted(records, key=lambda r: (r["index"], r["name"])):
        entry = {k: v for k, v in record.items() if k not in ("status", "failures")}
        entry["status"], entry["failures"] = evaluate(record, base_entries.get(record["name"]), policy)
        base = base_entries.get(record["name"])
        entry["baseline_speed"] = (base or {}).get("bench")
        entries.append(entry)
    counts = {s: sum(e["status"] == s for e in entries) for s in ("passed", "failed", "skipped")}
    return {
        "format": FORMAT,
        "version": VERSION,
        "llamaport": llamaport_version(),
        "spec": spec_path,
        "machine": machine(),
        "policy": policy.to_dict(),
        "baseline": baseline_path,
        "passed": counts["failed"] == 0,
        "summary": counts,
        "entries": entries,
    }


# ------------------------------------------------------------------------------------------------------ reading
def load_report(path: Path) -> dict:
    """A report.json (or a folder holding one), refused with one clear error when it is not one we can read."""
    path = Path(path)
    file = path / REPORT if path.is_dir() else path
    try:
        report = json.loads(file.read_text())
    except FileNotFoundError:
        raise LlamaportError(f"{file}: no such report; pass a report.json or the folder `pipeline run` wrote") from None
    except (OSError, ValueError) as e:
        raise LlamaportError(f"{file} is not a readable report ({e})") from None
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise LlamaportError(f"{file} is not a llamaport pipeline report (no \"format\": \"{FORMAT}\")")
    if report.get("version") != VERSION:
        raise LlamaportError(f"{file} has report version {report.get('version')}; this llamaport reads {VERSION}")
    return report


def merge_reports(folders: list[Path], out: Path | None, baseline: dict | None = None,
                  baseline_path: str | None = None) -> dict:
    """One report from the per-runner reports in `folders` (`pipeline run --entry NAME` on each runner)."""
    if not folders:
        raise LlamaportError("pipeline report needs at least one folder (or report.json) to merge")
    records: dict[str, dict] = {}
    where: dict[str, Path] = {}
    policy = spec = None
    for folder in folders:
        report = load_report(folder)
        root = Path(folder) if Path(folder).is_dir() else Path(folder).parent
        if policy is not None and report["policy"] != policy:
            raise LlamaportError(f"{root} was run with baseline policy {report['policy']}, {folders[0]} with "
                                 f"{policy}: merge the reports of one engines.toml")
        policy, spec = report["policy"], spec or report.get("spec")
        for entry in report["entries"]:
            if entry["name"] in records:
                raise LlamaportError(f"entry {entry['name']!r} is in both {where[entry['name']]} and {root}; "
                                     "merge each entry's report once")
            entry = dict(entry)
            engine = root / entry["engine_dir"]
            entry["engine_dir"] = os.path.relpath(engine, out) if out else str(engine)
            records[entry["name"]], where[entry["name"]] = entry, root
    return build_report(list(records.values()), BaselinePolicy(**policy), spec, baseline, baseline_path)


# ------------------------------------------------------------------------------------------------------ writing
def claim_output(out: Path) -> None:
    """Refuse an -o folder holding anything the pipeline does not write (its report.md or chart.png would be
    replaced, or a user's file mixed with engines); a folder with only the pipeline's own names is reused, which
    is also what a CI cache restores (engines/, entries/)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LlamaportError(f"{out} exists and is not a folder; choose another -o path")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in PIPELINE_NAMES) if out.is_dir() else []
    if foreign:
        raise LlamaportError(f"{out} holds {', '.join(foreign[:3])}, which the pipeline did not write; choose an "
                             "empty or new -o folder (or one an earlier pipeline run wrote)")
    out.mkdir(parents=True, exist_ok=True)


def write_report(report: dict, out: Path) -> None:
    """report.json, report.md and (with matplotlib) chart.png into `out`, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report["chart"], report["chart_note"] = None, None
    note = write_chart(report, out / CHART)
    if note:
        report["chart_note"] = note
    else:
        report["chart"] = CHART
    write_atomic(out / MARKDOWN, render_markdown(report))
    write_atomic(out / REPORT, json.dumps(report, indent=2) + "\n")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_markdown(report: dict) -> str:
    counts = report["summary"]
    lines = [
        f"# Engine pipeline: {'PASS' if report['passed'] else 'FAIL'}",
        "",
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped; llamaport "
        f"{report['llamaport']}; baseline: {report['baseline'] or 'none'}",
        "",
        "| engine | status | max \\|logit diff\\| | KL | top-1 | greedy match | ppl delta | prefill tok/s | "
        "decode tok/s | cache |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in report["entries"]:
        worst = (e.get("check") or {}).get("worst") or {}
        speed = e.get("bench") or {}
        decode = _fmt(speed.get("decode_tokens_per_s"), ".1f")
        before = (e.get("baseline_speed") or {}).get("decode_tokens_per_s")
        if before and speed:
            decode += f" ({100 * (speed['decode_tokens_per_s'] / before - 1):+.0f}%)"
        status = e["status"] if e["status"] != "failed" else "**FAILED**"
        cached = (e.get("cache") or {}).get("engine")
        lines.append(
            f"| {e['name']} | {status} | {_fmt(worst.get('max_abs_diff'), '.2e')} | {_fmt(worst.get('kl'), '.1e')} | "
            f"{_fmt(worst.get('top1'), '.3f')} | {_fmt(worst.get('greedy_match'), '.2f')} | "
            f"{_fmt(worst.get('ppl_rel_delta'), '.1e')} | {_fmt(speed.get('prefill_tokens_per_s'), '.0f')} | "
            f"{decode} | {cached or '-'} |"
        )
    failed = [e for e in report["entries"] if e["failures"]]
    if failed:
        lines += ["", "## What failed", ""]
        lines += [f"- `{e['name']}` ({f['kind']}): {f['message']}" for e in failed for f in e["failures"]]
    skipped = [e for e in report["entries"] if e["status"] == "skipped"]
    if skipped:
        lines += ["", "## Skipped (not run, not passed)", ""]
        lines += [f"- `{e['name']}`: {e['skip_reason']}" for e in skipped]
    lines += ["", "ppl delta: |perplexity(engine) - perplexity(eager)| / perplexity(eager) on the check text. "
                  "Speeds: batch 1 greedy decoding measured on the runner that built the engine."]
    if report.get("chart"):
        lines += ["", f"![decode tokens/s against perplexity delta]({report['chart']})"]
    elif report.get("chart_note"):
        lines += ["", f"Chart: {report['chart_note']}"]
    return "\n".join(lines) + "\n"


def write_chart(report: dict, path: Path) -> str | None:
    """Decode tokens/s against perplexity delta, one labelled point per measured engine; returns why it was not
    drawn (matplotlib missing, nothing measured), or None once written."""
    points = [(e["name"], e["check"]["worst"]["ppl_rel_delta"], e["bench"]["decode_tokens_per_s"])
              for e in report["entries"] if e.get("check") and e.get("bench")]
    if not points:
        return "skipped: no engine was both checked and benched"
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib is not installed (pip install 'llamaport[plot]')"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, delta, decode in points:
        ax.scatter(100 * delta, decode)
        ax.annotate(name, (100 * delta, decode), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("perplexity delta vs eager (%)")
    ax.set_ylabel("decode tokens/s (batch 1)")
    ax.set_title("engines: speed against accuracy")
    # From zero (the distance from eager and the speed, not just the spread between engines), with room for labels.
    ax.set_xlim(0, 1.35 * max(100 * d for _, d, _ in points) or 1e-6)
    ax.set_ylim(0, 1.15 * max(v for _, _, v in points))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.partial.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return None
