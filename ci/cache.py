"""What makes a built engine reusable: the cache keys, source checksums, and the check of a cached engine.

engine key = sha256(llamaport version, the source's sha256, the export settings): equal keys mean the exporter
would write the same engine directory, so the one on disk is reused once its files match the sha256s its
manifest records (verified, never assumed). check key = sha256(engine key, check settings, device): equal keys
mean the accuracy measured last time still holds. Speed is always measured again: it belongs to the machine.
The GitHub workflow keys `actions/cache` on the same two keys (see `plan`).
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from llamaport.enginedir import EngineDirError, open_engine_dir, sha256
from llamaport.errors import LlamaportError

from .spec import CheckSettings, Entry, Source


def llamaport_version() -> str:
    try:
        return metadata.version("llamaport")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def tree_sha256(folder: Path) -> str:
    """A folder checkpoint's checksum: sha256 over each file's relative path and sha256, in sorted order."""
    lines = [f"{p.relative_to(folder).as_posix()}\0{sha256(p)}\n"
             for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def source_sha256(source: Source, spec_path: Path) -> str:
    """The checksum of the source as it is on disk (a file's sha256, or a folder's tree_sha256)."""
    path = source.path
    if path.is_file():
        return sha256(path)
    if path.is_dir():
        return tree_sha256(path)
    raise LlamaportError(f"{spec_path}: key 'sources.{source.name}.path': {path} does not exist; fix the path (or "
                         "set the environment variable it uses)")


def resolve_sources(sources: list[Source], spec_path: Path, read_files: bool) -> dict[str, str]:
    """Each source's checksum. With `read_files` the file is hashed and must match a declared sha256; without
    (planning on a machine that may not hold the checkpoints) a declared sha256 is taken as it is."""
    out = {}
    for source in sources:
        if source.sha256 and not read_files:
            out[source.name] = source.sha256
            continue
        actual = source_sha256(source, spec_path)
        if source.sha256 and actual != source.sha256:
            raise LlamaportError(
                f"{spec_path}: key 'sources.{source.name}.sha256': {source.path} has sha256 {actual}, not the "
                f"declared {source.sha256}; the checkpoint changed: update sha256 if that was intended"
            )
        out[source.name] = actual
    return out


def engine_key(entry: Entry, source_digest: str) -> str:
    return _digest({"llamaport": llamaport_version(), "source_sha256": source_digest,
                    "export": entry.export.key_dict()})


def check_key(entry: Entry, engine: str, check: CheckSettings) -> str:
    return _digest({"engine": engine, "check": check.key_dict(), "device": str(entry.device)})


def reusable_engine(engine_dir: Path, previous: dict | None, key: str) -> tuple[bool, str]:
    """(reuse?, why): the previous run's record must have the same engine key and the engine directory must
    match its manifest's sha256s; a damaged one is rebuilt."""
    if previous is None or not engine_dir.exists():
        return False, "not built before"
    if (previous.get("cache") or {}).get("engine_key") != key:
        return False, "source, options or llamaport version changed"
    try:
        open_engine_dir(engine_dir, verify=True)
    except EngineDirError as e:
        return False, f"cached engine is damaged ({e})"
    return True, "source, options and llamaport version unchanged; files match the manifest's sha256s"
