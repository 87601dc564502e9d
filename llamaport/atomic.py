"""Write a whole output folder or nothing: build it in a temporary sibling, then rename it into place.

Safety rules for an existing output (`--overwrite`):
- Only what llamaport wrote is replaced: an engine directory (its manifest.json lists its files) or a folder
  `convert` wrote (its llamaport.json lists them), holding nothing else; an empty folder too. Anything else is
  refused, so a typo in `-o` never deletes a user's folder.
- An output that is, or contains, a source of the run (the checkpoint being read), or the current folder, is
  always refused.
- SIGTERM (a plain `kill`) and SIGHUP during the run are handled like Ctrl-C: the temporary folder is removed.
- Temporary folders are named `.NAME.PID.XXXXXXXX.partial` (and `.old` for the previous output while it is being
  swapped out). Ones left by a run that was killed outright (SIGKILL, power loss) belong to a process that no
  longer exists; the next run writing the same output removes them (and puts back an output a killed swap had
  moved aside).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from llamaport.enginedir import FORMAT as ENGINE_FORMAT
from llamaport.enginedir import MANIFEST as ENGINE_MANIFEST
from llamaport.errors import LlamaportError

# The marker `convert` writes into its output: {"format": MARKER_FORMAT, "files": [names it wrote]}.
MARKER = "llamaport.json"
MARKER_FORMAT = "llamaport-hf"
_TERMINATING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP arrived while an output was being written: unwinds exactly as Ctrl-C does."""


def write_marker(folder: Path, fmt: str = MARKER_FORMAT) -> None:
    """Record every file now in `folder` as written by llamaport, so `--overwrite` may replace them later."""
    files = sorted(p.name for p in Path(folder).iterdir() if p.name != MARKER)
    (Path(folder) / MARKER).write_text(json.dumps({"format": fmt, "files": files}, indent=2) + "\n")


def _written_by_us(folder: Path) -> set[str] | None:
    """Names llamaport recorded writing in `folder` (marker or engine manifest included); None if it did not."""
    for marker, fmt in ((ENGINE_MANIFEST, ENGINE_FORMAT), (MARKER, MARKER_FORMAT)):
        try:
            data = json.loads((folder / marker).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("format") != fmt:
            continue
        files = data.get("files")
        names = set(files) if isinstance(files, (dict, list)) else set()
        return {str(n) for n in names} | {marker}
    return None


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output(out: str | Path, overwrite: bool = False, flag: str = "-o",
                 sources: Iterable[str | Path] = ()) -> Path:
    """Refuse an output path that this run must not write (see the module docstring); cheap, so call it before
    loading anything. Returns the absolute output path."""
    out = Path(os.path.abspath(out))
    real = Path(os.path.realpath(out))
    for source in sources:
        src = Path(os.path.realpath(source))
        if _contains(real, src):
            raise LlamaportError(f"{flag} {out} contains the source {source}; writing there would delete it: "
                                 f"choose another {flag} path")
    if _contains(real, Path(os.path.realpath(os.getcwd()))):
        raise LlamaportError(f"{flag} {out} is the current folder (or holds it), which cannot be replaced while in "
                             f"use; run from another folder or choose another {flag} path")
    if not out.exists() and not out.is_symlink():
        return out
    if not out.is_dir():
        raise LlamaportError(f"{out} exists and is not a folder; choose another {flag} path")
    if not overwrite:
        raise LlamaportError(f"{out} already exists; choose another {flag} path or pass --overwrite to replace it")
    if out.is_symlink():
        raise LlamaportError(f"{out} is a symbolic link; --overwrite replaces only folders llamaport wrote: "
                             f"choose another {flag} path")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return out
    ours = _written_by_us(out)
    if ours is None:
        raise LlamaportError(f"{out} was not written by llamaport (no engine manifest.json or {MARKER}); --overwrite "
                             f"replaces only llamaport's own output: move it away or choose another {flag} path")
    foreign = sorted(entries - ours)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise LlamaportError(f"{out} holds {shown}, which llamaport did not write; --overwrite would delete it: "
                             f"move it away or choose another {flag} path")
    return out


# `.NAME.HOST-PID.XXXXXXXX.partial|old`: the host, so a folder shared between machines (NFS, a CI cache) never
# has another machine's live output judged by this machine's process table. Names without a host are local.
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:(?P<host>[A-Za-z0-9-]+?)-)?(?P<pid>\d+)\.[a-z0-9_]{8}\.(?P<kind>partial|old)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by another user
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Remove temporary folders of `out` whose writing process is gone; a stale `.old` whose swap was cut short
    is first moved back to `out` if `out` is missing. Returns what was removed. Only names of the exact form
    `.NAME.PID.XXXXXXXX.partial|old` are touched."""
    removed = []
    parent = out.parent
    try:
        candidates = list(parent.iterdir())
    except OSError:
        return removed
    for path in candidates:
        match = _TEMP.match(path.name)
        if not match or match["name"] != out.name or not path.is_dir() or path.is_symlink():
            continue
        if (match["host"] is not None and match["host"] != _host()) or _alive(int(match["pid"])):
            continue
        previous = path / out.name
        if match["kind"] == "old" and previous.is_dir() and not out.exists():
            os.replace(previous, out)  # killed between the two renames of a swap: the old output comes back
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def _terminate_like_ctrl_c() -> Iterator[None]:
    """Within this scope SIGTERM/SIGHUP raise `Terminated` (a KeyboardInterrupt) in the main thread, once: a second
    signal during the cleanup is ignored so the cleanup finishes. Outside the main thread nothing changes (Python
    delivers signals there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A signal the user set to be ignored stays ignored (`nohup llamaport export ...` must survive a hang-up).
    previous = {sig: signal.getsignal(sig) for sig in _TERMINATING_SIGNALS
                if signal.getsignal(sig) is not signal.SIG_IGN}

    def handler(signum, _frame):
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(f"{signal.Signals(signum).name}: stopped; nothing was written")

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _make_temp(parent: Path, name: str, kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{name}.{_host()}-{os.getpid()}.", suffix=f".{kind}", dir=parent))


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False, flag: str = "-o",
                      sources: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes `out`, on any error it is deleted.

    An existing `out` is refused unless `overwrite`, and even then unless llamaport wrote it (`check_output`);
    it is replaced only once the new folder is complete, so a failed run never loses the previous output.
    `sources`: paths the run reads, which `out` must not contain.
    """
    sources = list(sources)
    out = check_output(out, overwrite, flag, sources)
    parent = out.parent
    # The handler goes in before the temporary folder exists, so no signal can land between the two.
    with _terminate_like_ctrl_c():
        tmp = None
        try:
            try:
                parent.mkdir(parents=True, exist_ok=True)
                remove_stale(out)
                tmp = _make_temp(parent, out.name, "partial")
                umask = os.umask(0)
                os.umask(umask)
                tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any folder the user makes
            except OSError as e:
                raise LlamaportError(f"cannot write {out} ({e.strerror}); choose a writable {flag} path") from None
            yield tmp
            check_output(out, overwrite, flag, sources)  # again: the run took a while, and out may have changed
            _commit(tmp, out, flag)
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise


def _commit(tmp: Path, out: Path, flag: str) -> None:
    """Rename `tmp` to `out`; an existing `out` is moved aside first and put back if the rename fails."""
    try:
        if not out.exists():
            os.replace(tmp, out)
            return
        backup = _make_temp(out.parent, out.name, "old")
        os.replace(out, backup / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(backup / out.name, out)
            shutil.rmtree(backup, ignore_errors=True)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    except OSError as e:
        raise LlamaportError(f"cannot replace {out} ({e.strerror}); choose another {flag} path") from None
