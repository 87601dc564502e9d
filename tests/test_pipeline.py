"""The CI pipeline (`llamaport pipeline`): engines.toml parsing, export/check/bench per entry, gates, caching,
baselines, plan -> per-entry runs -> merged report, and the GitHub workflow's commands.

Two tiny random checkpoints (each with a small byte-level BPE tokenizer, so check runs on text as for real
models), four entries; the first run is shared by the tests, which copy its output folder (the cache) before
changing anything.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny import save_hf_model

from llamaport.cli import main

REPO = Path(__file__).resolve().parents[1]
VOCAB = 320  # the tokenizer's 259 byte-level tokens + merges fit in it; bench's random prompts need > 100
TEXT = "the cat sat on the mat and the dog ran far away from the cat on the mat"
ENTRIES = ["a-onnx-fp32-s32-b1", "a-ort-fp32-s32-b1", "b-ort-s32", "b-ort-s48"]


def _write_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer.json of at most VOCAB tokens (<unk> 0, <s> 1, </s> 2, as the tiny config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT] * 20, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))


def _spec(root: Path, extra_a: str = "", block_b: str = 'max_seq = [32, 48]', more: str = "") -> Path:
    text = textwrap.dedent(f"""\
        [sources.a]
        path = "a"
        [sources.b]
        path = "b"

        [check]
        prompts = ["the cat sat", "the dog ran far"]
        text = "{TEXT}"
        greedy_tokens = 4

        [bench]
        prompt_len = 8
        new_tokens = 4
        repeats = 1

        [[engines]]
        source = "a"
        target = ["onnx", "ort"]
        max_seq = 32
        {extra_a}

        [[engines]]
        name = "{{source}}-{{target}}-s{{max_seq}}"
        source = "b"
        target = "ort"
        {block_b}
        """) + more
    path = root / "engines.toml"
    path.write_text(text)
    return path


def _invoke(*args: str):
    return CliRunner().invoke(main, ["pipeline", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    for name, variant, seed in (("a", "gqa", 0), ("b", "mqa", 1)):
        save_hf_model(root / name, variant, seed=seed, vocab_size=VOCAB)
        _write_tokenizer(root / name)
    return root


@pytest.fixture(scope="module")
def first_run(sources):
    spec = _spec(sources)
    started = time.perf_counter()
    result = _invoke("run", spec, "-o", sources / "out")
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    return sources / "out", json.loads((sources / "out" / "report.json").read_text()), seconds


def _copy(first_run, tmp_path: Path) -> Path:
    """The first run's output (the cache) beside a copy of the sources, as a CI runner restores it."""
    out, _, _ = first_run
    shutil.copytree(out, tmp_path / "out")
    for name in ("a", "b"):
        (tmp_path / name).symlink_to(out.parent / name)
    return tmp_path / "out"


def test_two_sources_four_entries_are_exported_checked_and_benched(first_run):
    out, report, _ = first_run
    assert report["format"] == "llamaport-pipeline-report" and report["version"] == 1 and report["passed"]
    assert [e["name"] for e in report["entries"]] == ENTRIES
    for entry in report["entries"]:
        assert entry["status"] == "passed" and entry["cache"]["engine"] == "built", entry
        assert entry["check"]["worst"]["top1"] == 1.0 and entry["check"]["worst"]["max_abs_diff"] < 1e-3
        assert entry["bench"]["decode_tokens_per_s"] > 0
        assert (out / entry["engine_dir"] / "manifest.json").is_file()
        assert (out / "entries" / f"{entry['name']}.json").is_file()
    markdown = (out / "report.md").read_text()
    assert "# Engine pipeline: PASS" in markdown and all(f"| {name} | passed |" in markdown for name in ENTRIES)
    assert (out / "chart.png").is_file() if report["chart"] else "matplotlib" in report["chart_note"]
    assert not list(out.rglob("*.partial"))


def test_second_run_reuses_every_entry_and_is_much_faster(first_run, tmp_path):
    out = _copy(first_run, tmp_path)
    started = time.perf_counter()
    result = _invoke("run", _spec(tmp_path), "-o", out)
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [(e["cache"]["engine"], e["cache"]["check"]) for e in report["entries"]] == [("reused", "reused")] * 4
    assert seconds < first_run[2] / 3, (seconds, first_run[2])


def test_impossibly_tight_gate_exits_1_and_names_the_entry_and_metric_with_parallel_workers(first_run, tmp_path):
    out = _copy(first_run, tmp_path)
    spec = _spec(tmp_path, extra_a="gates = { max_abs_diff = 1e-30 }\nspeed = { decode_tokens_per_s = 1e12 }")
    result = _invoke("run", spec, "-o", out, "--jobs", "2")
    assert result.exit_code == 1
    assert "FAIL a-onnx-fp32-s32-b1: max_abs_diff" in result.output
    assert "FAIL a-ort-fp32-s32-b1: decode_tokens_per_s" in result.output
    report = json.loads((out / "report.json").read_text())
    assert not report["passed"] and report["summary"] == {"passed": 2, "failed": 2, "skipped": 0}
    failed = {e["name"]: {f["metric"] for f in e["failures"]} for e in report["entries"] if e["failures"]}
    assert failed == {name: {"max_abs_diff", "decode_tokens_per_s"} for name in ENTRIES[:2]}
    markdown = (out / "report.md").read_text()
    assert "# Engine pipeline: FAIL" in markdown and "`a-onnx-fp32-s32-b1` (gate): max_abs_diff" in markdown


def test_changed_option_or_damaged_engine_rebuilds_only_that_entry(first_run, tmp_path):
    out = _copy(first_run, tmp_path)
    data = out / "engines" / "a-ort-fp32-s32-b1" / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in a weight
    data.write_bytes(bytes(raw))
    spec = _spec(tmp_path, block_b="max_seq = [32, 48]\nmax_batch = [2]")  # same names, b's max_batch changed
    result = _invoke("run", spec, "-o", out, *[arg for name in ENTRIES[:3] for arg in ("--entry", name)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    cache = {e["name"]: e["cache"] for e in report["entries"]}
    assert list(cache) == ENTRIES[:3]
    assert (cache["a-onnx-fp32-s32-b1"]["engine"], cache["a-onnx-fp32-s32-b1"]["check"]) == ("reused", "reused")
    assert cache["a-ort-fp32-s32-b1"]["engine"] == "built" and "damaged" in cache["a-ort-fp32-s32-b1"]["why"]
    assert cache["b-ort-s32"]["engine"] == "built" and "options" in cache["b-ort-s32"]["why"]
    assert cache["b-ort-s32"]["check"] == "ran"
    assert json.loads((out / "engines" / "b-ort-s32" / "manifest.json").read_text())["max_batch"] == 2


def test_baseline_with_higher_speeds_fails_and_an_equal_one_passes(first_run, tmp_path):
    out = _copy(first_run, tmp_path)
    baseline = json.loads((out / "report.json").read_text())
    assert _invoke("report", out, "-o", tmp_path / "same", "--baseline", out / "report.json").exit_code == 0
    for entry in baseline["entries"]:
        entry["bench"]["decode_tokens_per_s"] *= 10  # the last accepted run decoded far faster...
        entry["bench"]["prefill_tokens_per_s"] /= 100  # ...and prefilled slower (noise here must not fail it)
    (tmp_path / "faster.json").write_text(json.dumps(baseline))
    result = _invoke("run", _spec(tmp_path), "-o", out, "--baseline", tmp_path / "faster.json")
    assert result.exit_code == 1
    report = json.loads((out / "report.json").read_text())
    kinds = {(f["kind"], f["metric"]) for e in report["entries"] for f in e["failures"]}
    assert kinds == {("baseline-speed", "decode_tokens_per_s")}
    assert "below baseline" in result.output


def _judged(report: dict) -> list[dict]:
    """What a report decides, without what differs between machines and runs (speeds, times, paths)."""
    drop = {"bench", "seconds", "machine", "engine_dir", "baseline_speed"}
    return [{**{k: v for k, v in e.items() if k not in drop},
             "cache": {k: e["cache"][k] for k in ("engine_key", "check_key")}} for e in report["entries"]]


def test_plan_then_one_run_per_entry_then_report_equals_one_local_run(first_run, tmp_path):
    out, local, _ = first_run
    for name in ("a", "b"):
        (tmp_path / name).symlink_to(out.parent / name)
    spec = _spec(tmp_path)
    result = _invoke("plan", spec, "--json")
    assert result.exit_code == 0, result.output
    matrix = json.loads(result.output)
    assert [job["entry"] for job in matrix["include"]] == ENTRIES
    runners = []
    for job in matrix["include"]:
        runner = tmp_path / f"runner-{job['entry']}"
        record = json.loads((out / "entries" / f"{job['entry']}.json").read_text())
        assert job["engine_key"] == record["cache"]["engine_key"] and job["check_key"] == record["cache"]["check_key"]
        # What actions/cache restores for this job's cache_key: that entry's engine directory and record.
        shutil.copytree(out / "engines" / job["entry"], runner / "engines" / job["entry"])
        shutil.copytree(out / "entries", runner / "entries", ignore=lambda _, names: [
            n for n in names if n != f"{job['entry']}.json"])
        result = _invoke("run", spec, "-o", runner, "--entry", job["entry"])
        assert result.exit_code == 0, result.output
        runners.append(runner)
    result = _invoke("report", *runners, "-o", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert _judged(merged) == _judged(local) and merged["passed"] == local["passed"]
    assert merged["entries"][0]["engine_dir"] == "../runner-a-onnx-fp32-s32-b1/engines/a-onnx-fp32-s32-b1"
    assert _invoke("report", runners[0], runners[0], "-o", tmp_path / "twice").exit_code == 1  # one entry twice


def test_tensorrt_entry_is_skipped_with_its_reason_never_passed(sources, tmp_path):
    (tmp_path / "a").symlink_to(sources / "a")
    spec = tmp_path / "trt.toml"
    spec.write_text('[sources.a]\npath = "a"\n[bench]\nprompt_len = 8\nnew_tokens = 4\n'
                    '[[engines]]\nsource = "a"\ntarget = "trt"\ndtype = "fp16"\nmax_seq = 32\n')
    result = _invoke("run", spec, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "out" / "report.json").read_text())["entries"]
    assert entry["status"] == "skipped" and ("TensorRT" in entry["skip_reason"] or "GPU" in entry["skip_reason"])
    assert "Skipped (not run, not passed)" in (tmp_path / "out" / "report.md").read_text()
    matrix = json.loads(_invoke("plan", spec, "--json", "--runner", "gpu").output)
    assert [job["runner"] for job in matrix["include"]] == ["gpu"]


@pytest.mark.parametrize("text, expected", [
    ("[sources.a\npath = 'a'", "is not valid TOML"),
    ("colour = 1\n", "unknown key 'colour'"),
    ("[sources.a]\npath = 'a'\n[[engines]]\nsource = 'a'\ntargets = ['ort']\n",
     "unknown key 'engines[0].targets'; did you mean 'target'?"),
    ("[sources.a]\npath = 'a'\n[[engines]]\nsource = 'a'\ntarget = 'tensorrt'\n",
     "key 'engines[0].target': 'tensorrt' is not one of onnx, ort, trt"),
    ("[sources.a]\npath = 'a'\n[[engines]]\nsource = 'a'\nquant = 'int3'\n",
     "key 'engines[0].quant': 'int3' is not one of none, int4"),
    ("[sources.a]\npath = 'a'\n[[engines]]\nsource = 'a'\nmax_seq = 0\n", "key 'engines[0].max_seq'"),
    ("[sources.a]\npath = 'a'\n[[engines]]\nsource = 'c'\n", "key 'engines[0].source': 'c' is not one of"),
    ("[sources.a]\npath = 'a'\n[[engines]]\nsource = 'a'\ngates = { top1 = 2 }\n", "key 'engines[0].gates.top1'"),
    ("[sources.a]\npath = 'a'\n[[engines]]\nsource = 'a'\ngates = { speed = 2 }\n",
     "unknown key 'engines[0].gates.speed'"),
    ("[sources.a]\npath = 'a'\nsha256 = 'abc'\n[[engines]]\nsource = 'a'\n", "key 'sources.a.sha256'"),
    ("[sources.a]\npath = 'a'\n[bench]\nprompt_len = 4000\n[[engines]]\nsource = 'a'\nmax_seq = 64\n",
     "key 'bench.prompt_len'"),
])
def test_bad_toml_unknown_keys_and_bad_values_give_one_error_naming_file_and_key(tmp_path, text, expected):
    spec = tmp_path / "engines.toml"
    spec.write_text(text)
    result = CliRunner().invoke(main, ["pipeline", "plan", str(spec)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(spec) in lines[0], result.output
    assert expected in lines[0]


def test_wrong_source_checksum_and_unknown_entry_are_refused_before_any_work(sources, tmp_path):
    (tmp_path / "a").symlink_to(sources / "a")
    spec = tmp_path / "engines.toml"
    spec.write_text(f'[sources.a]\npath = "a"\nsha256 = "{"0" * 64}"\n[[engines]]\nsource = "a"\nmax_seq = 32\n'
                    '[bench]\nprompt_len = 8\nnew_tokens = 4\n')
    result = _invoke("run", spec, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "sources.a.sha256" in result.output and not (tmp_path / "out").exists()
    result = _invoke("run", spec, "-o", tmp_path / "out", "--entry", "a-onnx-fp32-s32")
    assert result.exit_code == 1 and "did you mean 'a-onnx-fp32-s32-b1'" in result.output


def test_chart_is_skipped_with_a_note_without_matplotlib(first_run, tmp_path, monkeypatch):
    import sys

    from llamaport.ci.report import write_chart

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    assert "matplotlib is not installed" in write_chart(first_run[1], tmp_path / "chart.png")
    assert not (tmp_path / "chart.png").exists()


def test_github_workflow_parses_and_runs_only_llamaport_commands_that_exist():
    import re
    import shlex

    yaml = pytest.importorskip("yaml", reason="PyYAML comes with transformers in the [dev] extra")

    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "engines.yml").read_text())
    jobs = workflow["jobs"]
    assert {"plan", "cpu", "gpu", "report"} <= set(jobs)
    assert jobs["cpu"]["strategy"]["matrix"] and "needs" in jobs["report"]
    used = []
    for job in jobs.values():
        for step in job["steps"]:
            for line in step.get("run", "").replace("\\\n", " ").splitlines():
                for command in re.split(r"\|\||&&|;|\$\(|\)", line):  # each command of a shell line
                    words = shlex.split(command) if "llamaport " in command else []
                    if words[:1] == ["llamaport"]:
                        used.append(words[1:])
    assert {tuple(u[:2]) for u in used} == {("pipeline", "plan"), ("pipeline", "run"), ("pipeline", "report")}
    for words in used:
        command = main.commands[words[0]].commands[words[1]]
        options = {opt for p in command.params for opt in p.opts}
        flags = [w.split("=")[0] for w in words[2:] if w.startswith("-")]
        assert set(flags) <= options, (words, options)


def test_pipeline_output_folder_holding_a_users_files_is_refused_and_kept(tmp_path):
    from llamaport.ci.report import claim_output
    from llamaport.errors import LlamaportError

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    with pytest.raises(LlamaportError, match="notes.txt, which the pipeline did not write"):
        claim_output(folder)
    assert (folder / "notes.txt").read_text() == "my notes"
    claim_output(tmp_path / "fresh")  # new folders are taken and marked, so a rerun may write there again
    claim_output(tmp_path / "fresh")
