"""The exporter's side of `manifest.json`: the graph's I/O signature (needs onnx) and producer versions.

The format itself (schema, version, validation, writing) belongs to `llamaport.enginedir`; this module adds only
what needs onnx or the export environment.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import onnx
from onnx.helper import tensor_dtype_to_np_dtype

from llamaport import enginedir
from llamaport.enginedir import FORMAT, FORMAT_VERSION, GRAPH, MANIFEST, sha256  # noqa: F401  (re-exported)

PRODUCERS = ("llamaport", "torch", "onnx", "onnxscript", "onnxruntime")


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


def draft_manifest(folder: Path, *, source: str, config: dict, target: str, task: str, dtype: str, max_seq: int,
                   max_batch: int, logits: str, tokenizer: str | None,
                   quantization: dict | None = None) -> enginedir.Manifest:
    """`folder`'s manifest, not yet written, with the signature of `folder`/model.onnx (enginedir.draft_manifest)."""
    return enginedir.draft_manifest(
        folder, source=source, config=config, target=target, task=task, dtype=dtype, max_seq=max_seq,
        max_batch=max_batch, logits=logits, tokenizer=tokenizer, **io_signature(Path(folder) / GRAPH),
        producer={name: _version(name) for name in PRODUCERS}, verification=None, quantization=quantization,
    )

