"""Write a whole output folder or nothing: build it in a temporary sibling, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from llamaport.errors import LlamaportError


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False, flag: str = "-o") -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes `out`, on any error it is deleted.

    An existing `out` is refused unless `overwrite`; then it is replaced only once the new folder is complete, so
    a failed run never loses the user's previous output.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise LlamaportError(f"{out} already exists; choose another {flag} path or pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise LlamaportError(f"{out} exists and is not a folder; choose another {flag} path")
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any folder the user makes
    except OSError as e:
        raise LlamaportError(f"cannot write {out} ({e.strerror}); choose a writable {flag} path") from None
    try:
        yield tmp
        if out.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, backup / out.name)
            os.replace(tmp, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
