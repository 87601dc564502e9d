"""Outputs never cost a user data: `--overwrite` replaces only what llamaport wrote, an output never swallows its
source or the current folder, SIGTERM cleans up like Ctrl-C, and partial folders of killed runs are removed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from llamaport.atomic import MARKER, atomic_output_dir, check_output, remove_stale
from llamaport.cli import main
from llamaport.errors import LlamaportError


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def user_folder(path):
    path.mkdir()
    (path / "thesis.docx").write_text("three years of work")
    return path


def test_overwrite_of_a_folder_llamaport_did_not_write_is_refused_and_it_stays_intact(tiny_engine, tmp_path):
    docs = user_folder(tmp_path / "docs")
    result = run("export", tiny_engine[0], "-o", docs, "--overwrite", "--max-seq", 32)
    assert result.exit_code == 1 and "not written by llamaport" in result.output and "Traceback" not in result.output
    assert (docs / "thesis.docx").read_text() == "three years of work" and hidden(tmp_path) == []


def test_overwrite_replaces_an_engine_directory_but_not_one_holding_a_users_file(tiny_engine, tmp_path):
    engine = shutil.copytree(tiny_engine[1], tmp_path / "engine")
    with atomic_output_dir(engine, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in engine.iterdir()) == ["new.txt"] and hidden(tmp_path) == []

    engine = shutil.copytree(tiny_engine[1], tmp_path / "engine2")
    (engine / "notes.txt").write_text("mine")
    with pytest.raises(LlamaportError, match="holds notes.txt, which llamaport did not write"):
        check_output(engine, overwrite=True)
    assert (engine / "notes.txt").exists() and (engine / "manifest.json").exists()


def test_convert_marks_its_output_so_overwrite_may_replace_it(tiny_engine, tmp_path):
    assert run("convert", tiny_engine[0], "-o", tmp_path / "hf").exit_code == 0
    assert (tmp_path / "hf" / MARKER).exists()
    assert run("convert", tiny_engine[0], "-o", tmp_path / "hf", "--overwrite", "--dtype", "fp16").exit_code == 0


def test_output_containing_the_source_is_refused_and_the_source_stays(tiny_engine, tmp_path):
    src = shutil.copytree(tiny_engine[0], tmp_path / "hf")
    before = sorted(p.name for p in src.iterdir())
    for out in (src, tmp_path):  # the source itself, and a folder holding it
        result = run("export", src, "-o", out, "--overwrite", "--max-seq", 32)
        assert result.exit_code == 1 and "contains the source" in result.output, result.output
    assert sorted(p.name for p in src.iterdir()) == before
    # A folder convert wrote is replaceable, but never while it is the source being read.
    assert run("convert", src, "-o", tmp_path / "conv").exit_code == 0
    result = run("convert", tmp_path / "conv", "-o", tmp_path / "conv", "--overwrite")
    assert result.exit_code == 1 and "contains the source" in result.output
    with pytest.raises(LlamaportError, match="contains the source"):
        with atomic_output_dir(tmp_path / "conv", overwrite=True, sources=[tmp_path / "conv" / "config.json"]):
            pass
    assert (tmp_path / "conv" / "model.safetensors").exists()


def test_output_dot_is_refused_before_any_work_and_leaves_no_hidden_folder(tiny_engine, tmp_path, monkeypatch):
    engine = shutil.copytree(tiny_engine[1], tmp_path / "engine")
    monkeypatch.chdir(engine)
    result = run("export", tiny_engine[0], "-o", ".", "--overwrite", "--max-seq", 32)
    assert result.exit_code == 1 and "current folder" in result.output and "Traceback" not in result.output
    assert (engine / "manifest.json").exists() and hidden(engine) == [] and hidden(tmp_path) == []


def test_sigterm_during_export_leaves_nothing_behind(tiny_engine, tmp_path):
    out = tmp_path / "e"
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llamaport.cli", "export", str(tiny_engine[0]), "-o", str(out),
                             "--max-seq", "32"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".e.*.partial")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "export finished before it could be interrupted"
    time.sleep(0.5)  # inside the export's work, not at its first line
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    assert not out.exists() and hidden(tmp_path) == []


def test_stale_partial_folders_of_dead_runs_are_removed_and_others_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now belongs to no process
    from llamaport.atomic import _host

    stale = [tmp_path / f".e.{dead.pid}.abcd_123.partial", tmp_path / f".e.{dead.pid}.zzzzzzzz.old",
             tmp_path / f".e.{_host()}-{dead.pid}.abcdefgh.partial"]
    kept = [tmp_path / f".e.{os.getppid()}.abcdefgh.partial",  # a live process may still be writing it
            tmp_path / f".e.other-machine-{dead.pid}.abcdefgh.partial",  # a shared folder: that pid is not ours
            tmp_path / f".f.{dead.pid}.abcdefgh.partial",  # another output's
            tmp_path / ".e.backup"]  # not our pattern
    for folder in stale + kept:
        folder.mkdir()
    (stale[1] / "e").mkdir()  # a swap killed between its renames: the previous output waits in the .old folder
    (stale[1] / "e" / "manifest.json").write_text("{}")
    assert sorted(remove_stale(tmp_path / "e")) == sorted(stale)
    assert all(k.exists() for k in kept) and not any(s.exists() for s in stale)
    assert (tmp_path / "e" / "manifest.json").exists()  # put back, not deleted


def test_sigterm_handler_is_restored_after_the_output_is_written(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with atomic_output_dir(tmp_path / "out") as tmp:
        assert signal.getsignal(signal.SIGTERM) is not before
        (tmp / "x").write_text("x")
    assert signal.getsignal(signal.SIGTERM) is before and (tmp_path / "out" / "x").exists()


def test_an_ignored_hangup_stays_ignored_so_nohup_exports_survive(tmp_path):
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with atomic_output_dir(tmp_path / "out") as tmp:
            os.kill(os.getpid(), signal.SIGHUP)  # would raise Terminated if the handler had replaced SIG_IGN
            (tmp / "x").write_text("x")
        assert (tmp_path / "out" / "x").exists() and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
