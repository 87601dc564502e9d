"""`llamaport build`: an engine directory exported for TensorRT -> the same directory plus `model.engine`.

    plan = plan_build(export_dir, BuildOptions(plugins="llamaport"))    # pure: manifest + graph -> BuildPlan
    build_engine(export_dir, out, options)                                # TensorRT through Polygraphy, atomically

Everything that decides what gets built is a pure function of the manifest and the ONNX graph (no TensorRT, no
GPU), unit tested in CI: the two optimization profiles, every input's min/opt/max shape, the plugin nodes and
their fields (checked against plugins/schemas.py), the weight precision, the options recorded in the manifest.
The TensorRT part (`_build_with_polygraphy`) only turns that plan into Polygraphy calls:

    NetworkFromOnnxPath(path, strongly_typed=True) -> CreateConfig(profiles=[Profile().add(name, min=, opt=, max=)],
    load_timing_cache=) -> EngineFromNetwork(network, config, save_timing_cache=) -> SaveEngine(engine, path)

(signatures checked against the installed polygraphy 0.53: polygraphy/backend/trt/loader.py, config.py,
profile.py). Precision is the graph's own: TensorRT 11 networks are always strongly typed ("kSTRONGLY_TYPED ...
Deprecated in TensorRT 11.0. Strongly typed mode is always enabled", TensorRT include/NvInfer.h), so no fp16/int4
builder flags are set; fp16/bf16 come from the graph's dtypes and int4 weights from its DequantizeLinear nodes.

The output directory keeps the export's model.onnx (+ data, hard-linked where the filesystem allows), so an engine
directory can always be rebuilt from itself for another GPU or TensorRT version.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from llamaport import enginedir
from llamaport.atomic import atomic_output_dir
from llamaport.enginedir import Manifest, Name, Target, Task
from llamaport.errors import LlamaportError, MissingDependency
from llamaport.gpu import TENSORRT_INSTALL_HINT as INSTALL_HINT

from .schemas import PLUGIN_DOMAIN, PLUGINS, TRT_DOMAIN, PluginSpec

# TensorRT tunes tactics at a profile's opt shape and runs every shape in min..max: a typical prompt, not max_seq.
OPT_PREFILL_TOKENS = 128
_INT4_TYPES = (TensorProto.INT4, TensorProto.UINT4)


class PluginMode(Name):
    """How attention reaches TensorRT: our plugins (`--target trt`) or TensorRT 11's own ops (`--target trt-native`)."""

    LLAMAPORT = "llamaport"
    NATIVE = "native"

    @property
    def target(self) -> Target:
        return {PluginMode.LLAMAPORT: Target.TRT, PluginMode.NATIVE: Target.TRT_NATIVE}[self]


@dataclass(frozen=True)
class BuildOptions:
    plugins: PluginMode | str = PluginMode.LLAMAPORT
    timing_cache: Path | None = None  # read if it exists, written after the build (speeds up rebuilds)
    overwrite: bool = False


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class OptimizationProfile:
    name: str  # "prefill" | "decode"; the index in BuildPlan.profiles is TensorRT's profile index
    shapes: tuple[tuple[str, ShapeRange], ...]  # every graph input, in graph order

    def as_dict(self) -> dict:
        return {"name": self.name,
                "shapes": {n: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for n, r in self.shapes}}


@dataclass(frozen=True)
class PluginNode:
    """One distinct custom node of the graph: plugin id (namespace::name) and its fields, as TensorRT sees them."""

    plugin_id: str
    fields: tuple[tuple[str, int | str], ...]


@dataclass(frozen=True)
class BuildPlan:
    export_dir: Path
    onnx_path: Path
    mode: PluginMode
    profiles: tuple[OptimizationProfile, ...]
    plugin_nodes: tuple[PluginNode, ...]
    weights: str  # "fp32" | "fp16" | "bf16" | "int4" (int4 weight-only, activations in the graph dtype)
    timing_cache: Path | None
    strongly_typed: bool = True  # always: precision is the graph's
    copy_files: tuple[str, ...] = field(default=())  # files of the export the engine directory keeps

    def options_record(self) -> dict:
        """The build options as the manifest records them."""
        return {
            "plugins": self.mode.value,
            "strongly_typed": self.strongly_typed,
            "weights": self.weights,
            "profiles": [p.as_dict() for p in self.profiles],
            "plugin_nodes": [{"plugin": n.plugin_id, "fields": dict(n.fields)} for n in self.plugin_nodes],
            "timing_cache": self.timing_cache is not None,
        }


# ------------------------------------------------------------------------------------------------ plan (pure)
def profiles_for(manifest: Manifest) -> tuple[OptimizationProfile, OptimizationProfile]:
    """(prefill, decode): batch 1..max_batch in both; prefill takes 1..max_seq tokens, decode exactly 1.

    Two profiles rather than one so TensorRT picks decode tactics for S = 1 (the step that runs most) instead of
    tactics tuned for long prompts; the runtime runs each call on the context of its profile.
    """
    batch = (1, manifest.max_batch, manifest.max_batch)  # rows of a batch arrive together: tune for a full one
    prefill_tokens = (1, min(OPT_PREFILL_TOKENS, manifest.max_seq), manifest.max_seq)
    decode_tokens = (1, 1, 1)
    return (OptimizationProfile("prefill", _shapes(manifest, batch, prefill_tokens)),
            OptimizationProfile("decode", _shapes(manifest, batch, decode_tokens)))


def _shapes(manifest: Manifest, batch: tuple[int, int, int], tokens: tuple[int, int, int]):
    shapes = []
    for spec in manifest.inputs:
        ranges = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                ranges.append((dim, dim, dim))
            elif axis == 0:
                ranges.append(batch)
            elif spec.name == enginedir.INPUT_IDS and axis == 1:
                ranges.append(tokens)
            else:
                raise LlamaportError(f"{manifest.path}: input {spec.name} has a dynamic dim {dim!r} at axis {axis} "
                                     f"that no optimization profile covers; re-export with this llamaport")
        shapes.append((spec.name, ShapeRange(*(tuple(r[i] for r in ranges) for i in range(3)))))
    return tuple(shapes)


def _attributes(node: onnx.NodeProto) -> dict:
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _expected_fields(spec: PluginSpec, config: dict) -> dict[str, set[int]]:
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    if spec.name == "GQAAttention":
        return {"num_heads": {heads}, "num_kv_heads": {kv_heads}, "head_dim": {head_dim}}
    return {"num_heads": {heads, kv_heads}}  # RoPE runs on q and on k


def plugin_nodes(graph: onnx.GraphProto, manifest: Manifest, mode: PluginMode) -> tuple[PluginNode, ...]:
    """The distinct custom nodes TensorRT will meet, each checked against what the build registers.

    llamaport mode: every `llamaport` node must be one of plugins/schemas.PLUGINS with exactly its attributes
    (fields + plugin_version/plugin_namespace) and fields that fit the model's config; native mode: the graph
    must hold TensorRT's own TRT_* ops and no plugin node.
    """
    specs = {spec.name: spec for spec in PLUGINS}
    found: dict[tuple, PluginNode] = {}
    where = manifest.folder / enginedir.GRAPH
    for node in graph.node:
        if node.domain == PLUGIN_DOMAIN:
            if mode is PluginMode.NATIVE:
                raise LlamaportError(f"{where} holds llamaport plugin nodes ({node.op_type}); build it with "
                                     "--plugins llamaport, or re-export with --target trt-native")
            spec = specs.get(node.op_type)
            if spec is None:
                raise LlamaportError(f"{where}: node {node.name} is {PLUGIN_DOMAIN}.{node.op_type}, which this "
                                     f"llamaport has no TensorRT plugin for; re-export with this llamaport")
            attrs = _attributes(node)
            if set(attrs) != set(spec.node_attributes) or attrs["plugin_namespace"] != spec.namespace \
                    or attrs["plugin_version"] != spec.version:
                raise LlamaportError(f"{where}: node {node.name} has attributes {sorted(attrs)} (version "
                                     f"{attrs.get('plugin_version')!r}), but plugin {spec.plugin_id} version "
                                     f"{spec.version} takes {sorted(spec.node_attributes)}; re-export with this "
                                     "llamaport")
            for name, allowed in _expected_fields(spec, manifest.config).items():
                if attrs[name] not in allowed:
                    raise LlamaportError(f"{where}: node {node.name} has {name}={attrs[name]}, but the model's "
                                         f"config implies {sorted(allowed)}; the graph and manifest disagree: "
                                         f"{enginedir.REFETCH}")
            fields = tuple((name, int(attrs[name])) for name in spec.fields)
            found.setdefault((spec.plugin_id, fields), PluginNode(spec.plugin_id, fields))
        elif node.domain == TRT_DOMAIN:
            fields = tuple(sorted((k, v) for k, v in _attributes(node).items() if isinstance(v, (int, str))))
            found.setdefault((node.op_type, fields), PluginNode(f"{TRT_DOMAIN}::{node.op_type}", fields))
    kinds = {n.plugin_id.split("::")[0] for n in found.values()}
    wanted = PLUGIN_DOMAIN if mode is PluginMode.LLAMAPORT else TRT_DOMAIN
    if wanted not in kinds:
        raise LlamaportError(f"{where} has no {wanted} attention nodes, which --plugins {mode} builds from; "
                             f"re-export it with --target {mode.target}")
    return tuple(sorted(found.values(), key=lambda n: (n.plugin_id, n.fields)))


def weight_precision(graph: onnx.GraphProto, manifest: Manifest) -> str:
    """int4 when the graph stores int4 weights (DequantizeLinear on int4 initializers), else the graph dtype."""
    if any(init.data_type in _INT4_TYPES for init in graph.initializer):
        return "int4"
    return manifest.dtype.value


def check_export(manifest: Manifest, mode: PluginMode) -> None:
    """The export is one this mode builds: a causal LM exported for the matching TensorRT target."""
    folder = manifest.folder
    if manifest.task is not Task.CAUSAL_LM:
        raise LlamaportError(f"{folder} holds a {manifest.task} model; llamaport build takes causal-lm exports")
    if manifest.target is mode.target:
        return
    if manifest.target.is_tensorrt:
        other = next(m for m in PluginMode if m.target is manifest.target)
        raise LlamaportError(f"{folder} was exported with --target {manifest.target}, which builds with --plugins "
                             f"{other}; pass --plugins {other} or re-export with --target {mode.target}")
    raise LlamaportError(f"{folder} was exported with --target {manifest.target}; TensorRT builds from exports "
                         f"made with --target {mode.target} (llamaport export SRC -o DIR --target {mode.target})")


def plan_build(export_dir: str | Path, options: BuildOptions = BuildOptions()) -> BuildPlan:
    """Read and check EXPORT_DIR (manifest, file sizes, graph) and decide everything the build does."""
    mode = enginedir.parse(PluginMode, options.plugins, "--plugins")
    manifest = enginedir.open_engine_dir(export_dir)
    check_export(manifest, mode)
    onnx_path = manifest.folder / enginedir.GRAPH
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    timing_cache = Path(options.timing_cache) if options.timing_cache else None
    if timing_cache is not None and timing_cache.exists() and not timing_cache.is_file():
        raise LlamaportError(f"--timing-cache {timing_cache} is not a file; pass a file path (created if missing)")
    keep = tuple(name for name in manifest.files if name != enginedir.TRT_ENGINE)
    return BuildPlan(export_dir=manifest.folder, onnx_path=onnx_path, mode=mode, profiles=profiles_for(manifest),
                     plugin_nodes=plugin_nodes(graph, manifest, mode), weights=weight_precision(graph, manifest),
                     timing_cache=timing_cache, copy_files=keep)


def build_record(plan: BuildPlan, tensorrt_version: str, compute_capability: str) -> dict:
    """The manifest's TRT_BUILD entry, which the TensorRT backend checks before loading the engine."""
    return {
        "tensorrt_version": tensorrt_version,
        "compute_capability": compute_capability,
        "plugins": plan.mode.value,
        "plugin_version": enginedir.TRT_PLUGIN_VERSION if plan.mode is PluginMode.LLAMAPORT else None,
        "build_options": plan.options_record(),
    }


def built_manifest(source: Manifest, folder: Path, record: dict) -> dict:
    """The source manifest extended with the build record; files re-listed (model.engine now among them)."""
    data = json.loads(json.dumps(source.data))  # a deep copy of the JSON as written
    data["format_version"] = enginedir.FORMAT_VERSION  # `files` is written in the current format's shape
    data[enginedir.TRT_BUILD] = record
    data["files"] = enginedir.file_records(folder)
    # never write a manifest the reader would refuse
    enginedir.parse_manifest(json.loads(json.dumps(data)), folder / enginedir.MANIFEST)
    return data


# ------------------------------------------------------------------------------------------------ TensorRT (thin)
def require_tensorrt():
    """The tensorrt module, or MissingDependency (exit status 2) naming what to install."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependency(f"llamaport build needs TensorRT, which is not installed: {INSTALL_HINT}") from None
    return tensorrt


def _build_with_polygraphy(plan: BuildPlan, engine_path: Path) -> None:
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    if plan.mode is PluginMode.LLAMAPORT:
        from .tensorrt_plugins import register_plugins

        register_plugins()  # the ONNX parser finds them by (op type, plugin_version, plugin_namespace)
    profiles = []
    for planned in plan.profiles:
        profile = Profile()
        for name, shape in planned.shapes:
            profile.add(name, min=shape.min, opt=shape.opt, max=shape.max)
        profiles.append(profile)
    cache = plan.timing_cache
    # A timing cache file that does not exist yet loads as an empty cache (polygraphy/backend/trt/config.py).
    config = CreateConfig(profiles=profiles, load_timing_cache=str(cache) if cache else None)
    network = NetworkFromOnnxPath(str(plan.onnx_path), strongly_typed=plan.strongly_typed)
    engine = EngineFromNetwork(network, config, save_timing_cache=str(cache) if cache else None)
    SaveEngine(engine, str(engine_path))()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the export's weights, without a second copy on disk
    except OSError:
        shutil.copy2(src, dst)


def build_engine(export_dir: str | Path, out: str | Path, options: BuildOptions = BuildOptions()) -> dict:
    """Build OUT (an engine directory with model.engine) from EXPORT_DIR; returns OUT's manifest.

    Input problems fail first (exit 1), a missing TensorRT next (exit 2), both before anything is written.
    """
    plan = plan_build(export_dir, options)
    trt = require_tensorrt()
    from llamaport.gpu import compute_capability

    source = enginedir.read_manifest(plan.export_dir)
    with atomic_output_dir(out, options.overwrite, sources=[plan.export_dir]) as tmp:
        for name in plan.copy_files:
            _link_or_copy(plan.export_dir / name, tmp / name)
        _build_with_polygraphy(plan, tmp / enginedir.TRT_ENGINE)
        record = build_record(plan, trt.__version__, compute_capability())
        manifest = built_manifest(source, tmp, record)
        (tmp / enginedir.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
