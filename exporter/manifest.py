"""The engine directory's `manifest.json`: what the graph is, how to feed it, and what its export verified.

Versioned (`format_version`); the runtime refuses engine directories written with a newer major version.
No timestamps, so exporting the same checkpoint twice writes identical bytes.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import onnx
from onnx.helper import tensor_dtype_to_np_dtype

FORMAT = "llamaport-engine"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def io_signature(model_path: Path) -> dict:
    """Names, shapes (ints or symbolic names) and dtypes of the graph's inputs and outputs."""
    graph = onnx.load(str(model_path), load_external_data=False).graph

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
            out.append({"name": v.name, "shape": dims, "dtype": tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


def write_manifest(folder: Path, *, source: str, config: dict, target: str, task: str, dtype: str, max_seq: int, max_batch: int,
                   logits: str, tokenizer: str | None, accuracy: dict | None) -> dict:
    files = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": source,  # the checkpoint, for `llamaport check`'s default reference
        "task": task,
        "target": target,
        "dtype": dtype,
        "max_seq": max_seq,
        "max_batch": max_batch,
        "logits": logits,
        "tokenizer": tokenizer,
        "config": config,
        **io_signature(folder / "model.onnx"),
        "producer": {name: _version(name) for name in ("llamaport", "torch", "onnx", "onnxscript", "onnxruntime")},
        "files": files,
        "verification": accuracy,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
