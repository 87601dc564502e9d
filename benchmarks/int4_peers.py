"""Int4 CPU speed against llama.cpp and onnxruntime-genai, in one run, on SmolLM2-135M and a TinyLlama-1.1B-shaped
random checkpoint (issue 9).

    sh benchmarks/install_peers.sh                     # the peers, built/installed by script (once)
    python benchmarks/int4_peers.py [--rounds 3] [--repeats 3] [--models smollm2 1b] [--work DIR] [--json OUT.json]
                                    [--peer-huge-pages]   # + each peer on glibc's huge pages (PEER_HUGE_PAGES)
    python benchmarks/int4_peers.py --profile ENGINE   # ONNX Runtime per-op profile of one int4 decode

Prepares, once per --work folder (default /tmp/llamaport-int4-peers; reused between runs):
  * llamaport int4 `ort` engines via the CLI: SmolLM2 with `--method gguf` (the asset's own Q4_1 codes), the 1B with
    RTN at its defaults (largest group that divides every layer; int8 activations, int8 head), `--max-seq 512`;
    both models also with RTN at genai's settings (`--symmetric --lm-head int4`: GENAI_LIKE);
  * llama.cpp GGUFs: the SmolLM2 asset as-is (Q4_1); for the 1B, convert_hf_to_gguf.py to f16, then llama-quantize
    to Q4_0 and Q4_K_M;
  * onnxruntime-genai int4 CPU models from its builder (`-p int4 -e cpu`, its defaults: symmetric, accuracy level 4,
    block 32; the 1B also with block 128, ours' group), from an HF folder (`llamaport convert` for the GGUF),
    with `intra_op_num_threads` = cores written into genai_config.json (its default runs decode at about half speed).
Then measures prefill and decode tokens/s of each in interleaved rounds: every runtime once per round in a fresh
process, the order rotated each round (benchmarks/compare.py's scheme), and the machine's read bandwidth after each
round. Each process times --repeats generations after a warm-up and reports their median (llama-bench: their mean);
every runtime runs at each --threads count (default 1 and the core count: see DEFAULT_THREADS). llama.cpp:
`llama-bench -t T -p 128 -n 64 -r R -o json` (its tg64 decodes from an empty cache, the others after the
128-token prompt: at these sizes the cache is <4% of the bytes a step reads). llamaport: `llamaport bench ENGINE
--threads T --repeats R --json`. onnxruntime-genai: its Python API (compare.GenaiPeer), intra_op_num_threads = T.

% of roofline = decode tokens/s x bytes one decode step reads / measured read bandwidth (runtime.bench's ReduceSum
probe, best of the rounds). Bytes per step are counted from each runtime's own weight file: every weight tensor,
except an embedding table read only by a Gather (one row per token), plus the KV cache over the mean context in the
runtime's cache dtype (fp32 for the two ONNX Runtime ones, f16 for llama.cpp).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from compare import THREADS, GenaiPeer, find_assets_dir, timed_subprocess  # noqa: E402

PEERS = Path(os.environ.get("LLAMAPORT_PEERS", Path.home() / ".cache" / "llamaport-peers")) / "llama.cpp"
EXPORT_SCALE_1B = Path(tempfile.gettempdir()) / "llamaport-export-scale" / "random-1b"
GATHERS = {"Gather", "GatherBlockQuantized"}
# Every runtime at 1 thread and at one per core (the setting): llama.cpp's threads meet at a spinning barrier
# after every op, so on cores shared with other jobs one descheduled thread stalls the other (measured here under
# load ~6: tg32 3.9 tok/s at -t 2, 46.8 at -t 1, SmolLM2 Q4_1). Each runtime's best is the faster of its rows.
DEFAULT_THREADS = sorted({1, THREADS})
# llamaport moves an ONNX Runtime session's prepacked weights onto transparent huge pages itself
# (runtime/backends/hugepages.py). The peers do not, but glibc (2.35+) can do it for any process's malloc'd memory:
# with --peer-huge-pages each peer also runs so (llama.cpp with `-lm none`: its weights read into malloc'd memory,
# not mapped from the file), at the best settings the environment can give it.
PEER_HUGE_PAGES = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


# ---------------------------------------------------------------------------------------------------- preparation

def _run(cmd: list, log: list) -> None:
    """A preparation step, timed (wall s, peak RSS MB) and recorded with its command line."""
    wall, rss = timed_subprocess([str(c) for c in cmd])
    log.append({"command": " ".join(str(c) for c in cmd), "wall_s": round(wall, 1), "peak_rss_mb": round(rss)})
    print(f"  {wall:.0f} s, {rss:.0f} MB: {' '.join(str(c) for c in cmd)[:160]}", flush=True)


# onnxruntime-genai's int4 defaults in our flags: symmetric codes, an int4 head (ours defaults to asymmetric codes
# and an int8 head, for quality). Benchmarked beside our defaults so each runtime is also seen at the same settings.
GENAI_LIKE = ["--symmetric", "--lm-head", "int4"]


def _llamaport_export(src: Path, out: Path, method: str, log: list, verify: bool, flags: list[str] = ()) -> Path:
    if not (out / "manifest.json").exists():
        _run([sys.executable, "-m", "llamaport.cli", "export", src, "-o", out, "--target", "ort", "--quant", "int4",
              "--method", method, "--max-seq", "512", "--quiet", "--overwrite", *flags]
             + ([] if verify else ["--skip-verify"]), log)
    return out


def _genai_threads(model: Path, threads: int) -> Path:
    """The builder's output with intra_op_num_threads = `threads` in genai_config.json (its thread setting lives in
    that file): the same files linked into a sibling folder."""
    if threads == THREADS:
        return model
    out = model.with_name(f"{model.name}-t{threads}")
    out.mkdir(exist_ok=True)
    for f in model.iterdir():
        if f.name != "genai_config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f)
    config = json.loads((model / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    (out / "genai_config.json").write_text(json.dumps(config, indent=2))
    return out


def _genai_build(hf_dir: Path, out: Path, log: list, block_size: int | None = None) -> Path:
    if not (out / "genai_config.json").exists():
        cache = out.with_name(out.name + "-cache")
        extra = ["--extra_options", f"block_size={block_size}"] if block_size else []
        _run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", hf_dir, "-o", out, "-p", "int4",
              "-e", "cpu", "-c", cache, *extra], log)
        shutil.rmtree(cache, ignore_errors=True)
        config_path = out / "genai_config.json"
        config = json.loads(config_path.read_text())
        config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = THREADS
        config_path.write_text(json.dumps(config, indent=2))
    return out


def _llama_cpp_ggufs(hf_dir: Path, work: Path, log: list) -> dict[str, Path]:
    """f16 GGUF by llama.cpp's own converter (its gguf-py), then Q4_0 and Q4_K_M by llama-quantize."""
    f16 = work / "llama.cpp-f16.gguf"
    if not f16.exists():
        # llama.cpp's gguf-py, not the installed gguf package: the converter needs its own version's.
        _run(["env", f"PYTHONPATH={PEERS / 'gguf-py'}", sys.executable, PEERS / "convert_hf_to_gguf.py", hf_dir,
              "--outtype", "f16", "--outfile", f16], log)
    out = {}
    for kind in ("Q4_0", "Q4_K_M"):
        path = out[kind] = work / f"llama.cpp-{kind.lower()}.gguf"
        if not path.exists():
            _run([PEERS / "bin" / "llama-quantize", f16, path, kind, THREADS], log)
    return out


def _config(engine: Path) -> dict:
    """The model config an engine directory's manifest records (shapes for the roofline)."""
    return json.loads((engine / "manifest.json").read_text())["config"]


def prepare(models: list[str], work: Path, assets: Path | None, checkpoint_1b: Path,
            thread_counts: list[int], peer_huge_pages: bool = False) -> tuple[list[dict], list]:
    """Every runtime's files for every model: a list of specs {model, runtime, name, path, config, threads}, and
    with `peer_huge_pages` each peer's spec again with huge_pages=True (see PEER_HUGE_PAGES)."""
    specs, log = [], []
    have_llama = (PEERS / "bin" / "llama-bench").exists()
    have_genai = _importable("onnxruntime_genai")

    def add(model: str, runtime: str, name: str, path: Path, config: dict) -> None:
        specs.append(dict(model=model, runtime=runtime, name=name, path=path, config=config, threads=thread_counts))
    if "smollm2" in models:
        gguf = (assets / "smollm2-135m-instruct-q4_1.gguf") if assets else None
        if gguf is None or not gguf.exists():
            sys.exit("SmolLM2 GGUF not found: set LLAMAPORT_ASSETS or run scripts/fetch_assets.py")
        folder = work / "smollm2"
        print(f"[smollm2] preparing in {folder}", flush=True)
        ours = _llamaport_export(gguf, folder / "llamaport-int4-gguf", "gguf", log, verify=True)
        config = _config(ours)
        add("smollm2", "llamaport", "llamaport int4 ort (GGUF Q4_1 codes, int8 head)", ours, config)
        # The same model re-quantized by RTN: integer zero points, so no Q4_1 offset correction beside each
        # MatMulNBits (what the GGUF codes' float minimums cost; see --profile). Lossy against the asset's codes.
        rtn = _llamaport_export(gguf, folder / "llamaport-int4-rtn", "rtn", log, verify=True)
        add("smollm2", "llamaport", "llamaport int4 ort (RTN defaults, int8 head)", rtn, config)
        like = _llamaport_export(gguf, folder / "llamaport-int4-rtn-sym-head4", "rtn", log, True, GENAI_LIKE)
        add("smollm2", "llamaport", "llamaport int4 ort (RTN symmetric, int4 head)", like, config)
        if have_llama:
            add("smollm2", "llama.cpp", "llama.cpp Q4_1 (the asset)", gguf, config)
        if have_genai:
            hf = folder / "hf"
            if not hf.exists():
                _run([sys.executable, "-m", "llamaport.cli", "convert", gguf, "-o", hf], log)
            add("smollm2", "genai", "onnxruntime-genai int4 (block 32)", _genai_build(hf, folder / "genai-int4", log),
                config)
    if "1b" in models:
        if not (checkpoint_1b / "model.safetensors.index.json").exists():
            vocab = (assets / "llama-spm-vocab.gguf") if assets else None
            subprocess.run([sys.executable, REPO / "benchmarks" / "export_scale.py", "--write-checkpoint", "1b",
                            checkpoint_1b, vocab if vocab and vocab.exists() else ""], check=True)
        folder = work / "1b"
        print(f"[1b] preparing in {folder} from {checkpoint_1b}", flush=True)
        # Random weights: verification (the eager fp32 model beside the graph) is skipped to save ~5 GB and minutes.
        ours = _llamaport_export(checkpoint_1b, folder / "llamaport-int4-rtn", "rtn", log, verify=False)
        config = _config(ours)
        add("1b", "llamaport", "llamaport int4 ort (RTN defaults, int8 head)", ours, config)
        like = _llamaport_export(checkpoint_1b, folder / "llamaport-int4-rtn-sym-head4", "rtn", log, False, GENAI_LIKE)
        add("1b", "llamaport", "llamaport int4 ort (RTN symmetric, int4 head)", like, config)
        if have_llama:
            for kind, path in _llama_cpp_ggufs(checkpoint_1b, folder, log).items():
                add("1b", "llama.cpp", f"llama.cpp {kind}", path, config)
        if have_genai:
            for block in (32, 128):
                path = _genai_build(checkpoint_1b, folder / f"genai-int4-b{block}", log, None if block == 32 else block)
                add("1b", "genai", f"onnxruntime-genai int4 (block {block})", path, config)
    # One spec per thread count: each is its own process in every round.
    specs = [dict(s, threads=t, name=f"{s['name']}, {t} thread{'s' if t > 1 else ''}",
                  path=_genai_threads(s["path"], t) if s["runtime"] == "genai" else s["path"])
             for s in specs for t in s["threads"]]
    if peer_huge_pages:
        specs += [dict(s, huge_pages=True, name=s["name"] + ", huge pages") for s in specs
                  if s["runtime"] != "llamaport"]
    missing = [n for n, ok in (("llama.cpp (llama-bench)", have_llama), ("onnxruntime-genai", have_genai)) if not ok]
    if missing:
        print(f"not installed, skipped: {', '.join(missing)} (run sh benchmarks/install_peers.sh)", flush=True)
    return specs, log


# ---------------------------------------------------------------------------------------------------- bytes / step

def onnx_bytes_per_step(model_path: Path) -> int:
    """Weight bytes one decode step reads from an ONNX model: each initializer's stored size (raw or external
    data; nothing is loaded), except a table read only by Gather nodes, of which one row is read per token.
    (runtime.bench.weight_bytes counts whole files: right for fp32 engines with a tied head, an overcount for an
    untied embedding table.)"""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    total = 0
    for init in model.graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        size = int(ext["length"]) if "length" in ext else len(init.raw_data)
        if consumers.get(init.name) and consumers[init.name] <= GATHERS and init.dims:
            size //= init.dims[0]  # one row of the table (scales / zero points gathered alike)
        total += size
    return total


def gguf_bytes_per_step(path: Path) -> int:
    """A GGUF's tensors, less token_embd when the model has its own output.weight (then the table is only gathered;
    tied, the head reads it whole)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    if "output.weight" in tensors:
        tensors.pop("token_embd.weight", None)
    return sum(tensors.values())


def bytes_per_step(spec: dict, context: float) -> tuple[int, float]:
    """(weight bytes, KV-cache bytes) one decode step reads in this runtime."""
    from llamaport.runtime.bench import kv_bytes_per_token

    if spec["runtime"] == "llama.cpp":
        return gguf_bytes_per_step(Path(spec["path"])), kv_bytes_per_token(spec["config"], context, 2)  # f16 cache
    model = Path(spec["path"]) / "model.onnx"
    return onnx_bytes_per_step(model), kv_bytes_per_token(spec["config"], context, 4)  # fp32 cache on the CPU


# ---------------------------------------------------------------------------------------------------- measurement

def measure(spec: dict, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    """One fresh process of one runtime, `repeats` timed generations after a warm-up: {"prefill": tok/s,
    "decode": tok/s} (llama-bench's mean, the others' median)."""
    env = dict(os.environ, **PEER_HUGE_PAGES) if spec.get("huge_pages") else None
    if spec["runtime"] == "llama.cpp":
        no_mmap = ["-lm", "none"] if spec.get("huge_pages") else []  # weights read into malloc'd memory, THP's
        out = subprocess.run([PEERS / "bin" / "llama-bench", "-m", spec["path"], "-t", str(spec["threads"]),
                              "-p", str(prompt_len), "-n", str(new_tokens), "-r", str(repeats), "-o", "json",
                              *no_mmap], check=True, capture_output=True, text=True, env=env)
        rows = json.loads(out.stdout)
        prefill = next(r for r in rows if r["n_prompt"] == prompt_len)["avg_ts"]
        decode = next(r for r in rows if r["n_gen"] == new_tokens)["avg_ts"]
        return {"prefill": prefill, "decode": decode, "build": rows[0].get("build_commit"),
                "flash_attn": rows[0].get("flash_attn")}
    if spec["runtime"] == "llamaport":
        out = subprocess.run([sys.executable, "-m", "llamaport.cli", "bench", spec["path"], "--prompt-len",
                              str(prompt_len), "--new-tokens", str(new_tokens), "--repeats", str(repeats), "--threads",
                              str(spec["threads"]), "--json"], check=True, capture_output=True, text=True)
        report = json.loads(out.stdout)
        return {"prefill": report["prefill_tokens_per_s"], "decode": report["decode_tokens_per_s"]}
    out = subprocess.run([sys.executable, __file__, "--genai-worker", str(spec["path"]), "--vocab",
                          str(spec["config"]["vocab_size"]), "--prompt-len", str(prompt_len), "--new-tokens",
                          str(new_tokens), "--repeats", str(repeats)], check=True, capture_output=True, text=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def genai_worker(model_dir: str, vocab: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    """compare.GenaiPeer in this fresh process: a warm-up generation, then `repeats` timed ones (medians)."""
    import numpy as np

    ids = np.random.default_rng(0).integers(100, vocab - 1, prompt_len).tolist()  # as runtime.bench's prompt
    peer = GenaiPeer("genai", Path(model_dir), ids, new_tokens)
    peer.measure()
    runs = [peer.measure() for _ in range(repeats)]
    return {"prefill": prompt_len / statistics.median(t for t, _ in runs),
            "decode": statistics.median(d for _, d in runs)}


def run_rounds(specs: list[dict], rounds: int, prompt_len: int, new_tokens: int,
               repeats: int) -> tuple[dict, list[float]]:
    """compare.run_rounds' scheme for mixed kinds of runtime (a CLI binary among Python ones): every spec once per
    round in a fresh process, the order rotated each round, read bandwidth measured after each round."""
    from llamaport.runtime.bench import measure_read_bandwidth

    results = {s["name"] + "@" + s["model"]: [] for s in specs}
    bandwidths = []
    for r in range(rounds):
        shift = r % len(specs)
        for spec in specs[shift:] + specs[:shift]:
            results[spec["name"] + "@" + spec["model"]].append(measure(spec, prompt_len, new_tokens, repeats))
        bandwidths.append(measure_read_bandwidth(THREADS) / 1e9)
        print(f"round {r + 1}/{rounds} (bandwidth {bandwidths[-1]:.1f} GB/s, load {os.getloadavg()[0]:.1f}): "
              + "; ".join(f"{k.split('@')[1]} {k.split('@')[0]}: {v[-1]['decode']:.1f}"
                          for k, v in results.items()), flush=True)
    return results, bandwidths


# ---------------------------------------------------------------------------------------------------- report

def report(specs, results, bandwidths, prompt_len, new_tokens, rounds, loads) -> tuple[str, list[dict]]:
    best_bw = max(bandwidths)
    context = prompt_len + new_tokens / 2
    rows, lines = [], []
    lines += [f"{platform.machine()}, {THREADS} cores, prompt {prompt_len} tokens, {new_tokens} new tokens, batch 1, "
              f"{rounds} interleaved rounds (fresh process per runtime per round, order rotated). Read bandwidth "
              f"(ONNX Runtime ReduceSum, {THREADS} threads) per round: "
              + ", ".join(f"{b:.1f}" for b in bandwidths) + f" GB/s; % of roofline uses the best, {best_bw:.1f} GB/s. "
              f"Load average (1/5/15 min) before: {loads[0]}, after: {loads[1]}.", "",
              "| model | runtime | decode tok/s (median / best) | prefill tok/s (median / best) | weights read / step "
              "| KV read / step | % of roofline (median / best) |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for spec in specs:
        runs = results[spec["name"] + "@" + spec["model"]]
        decodes, prefills = [r["decode"] for r in runs], [r["prefill"] for r in runs]
        weights, kv = bytes_per_step(spec, context)
        roof = [100 * d * (weights + kv) / (best_bw * 1e9) for d in (statistics.median(decodes), max(decodes))]
        row = dict(model=spec["model"], runtime=spec["runtime"], name=spec["name"], path=str(spec["path"]),
                   decode=decodes, prefill=prefills, decode_median=statistics.median(decodes),
                   decode_best=max(decodes), prefill_median=statistics.median(prefills), prefill_best=max(prefills),
                   weight_bytes_per_step=weights, kv_bytes_per_step=kv, roofline_percent_median=roof[0],
                   roofline_percent_best=roof[1])
        rows.append(row)
        lines.append(f"| {spec['model']} | {spec['name']} | {row['decode_median']:.1f} / {row['decode_best']:.1f} | "
                     f"{row['prefill_median']:.0f} / {row['prefill_best']:.0f} | {weights / 1e6:.0f} MB | "
                     f"{kv / 1e6:.1f} MB | {roof[0]:.0f}% / {roof[1]:.0f}% |")
    return "\n".join(lines), rows


def versions(specs_runs: dict) -> dict:
    import onnxruntime

    out = {"onnxruntime": onnxruntime.__version__}
    if _importable("onnxruntime_genai"):
        import onnxruntime_genai

        out["onnxruntime-genai"] = onnxruntime_genai.__version__
    if (PEERS / "VERSION").exists():
        out["llama.cpp"] = " ".join((PEERS / "VERSION").read_text().split())
    builds = {r.get("build") for runs in specs_runs.values() for r in runs if r.get("build")}
    if builds:
        out["llama-bench build_commit"] = ", ".join(sorted(builds))
    return out


# ---------------------------------------------------------------------------------------------------- profile

def profile(engine_dir: Path, prompt_len: int, new_tokens: int, threads: int, top: int = 12) -> str:
    """ONNX Runtime's profiler over one generation of our engine: time per decode step by op (and by MatMulNBits
    width: the int8 head apart from the int4 body), prefill excluded."""
    import onnx
    import onnxruntime as ort

    from llamaport.runtime import Engine, SamplingParams

    engine = Engine.open(engine_dir, threads=threads)
    backend = engine.backend
    options = ort.SessionOptions()  # the backend's own settings + the profiler (runtime/ code is not changed)
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "llamaport-int4-profile")
    vocab = engine.config["vocab_size"]
    ids = [int(i) for i in __import__("numpy").random.default_rng(0).integers(100, vocab - 1, prompt_len)]
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    engine.generate(ids, SamplingParams(max_new_tokens=4, ignore_eos=True))  # warm (unprofiled session)
    backend.session = ort.InferenceSession(str(engine_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    backend.batch = None  # re-bind the caches to the new session
    engine.generate(ids, params)
    trace = json.loads(Path(backend.session.end_profiling()).read_text())

    bits = {}
    for node in onnx.load(str(engine_dir / "model.onnx"), load_external_data=False).graph.node:
        if node.op_type == "MatMulNBits":
            bits[node.name] = next((a.i for a in node.attribute if a.name == "bits"), 4)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("name") == "model_run")
    decode_runs = runs[1:]  # the first run is the prompt
    per_op, total = {}, 0.0
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not any(a <= e["ts"] <= b for a, b in decode_runs):
            continue
        node = e["name"][: -len("_kernel_time")]
        op = e["args"].get("op_name", "?")
        if op == "MatMulNBits":
            op = f"MatMulNBits {bits.get(node, '?')}-bit" + (" (LM head)" if bits.get(node) == 8 else "")
        per_op[op] = per_op.get(op, 0.0) + e["dur"]
        total += e["dur"]
    steps = len(decode_runs)
    wall = sum(b - a for a, b in decode_runs) / steps
    lines = [f"{engine_dir}, {threads} thread(s): {steps} decode steps profiled (prompt {prompt_len}); "
             f"wall per step {wall / 1e3:.2f} ms, kernels {total / steps / 1e3:.2f} ms.", "",
             "| op | ms / step | share of kernel time |", "| --- | ---: | ---: |"]
    for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {op} | {us / steps / 1e3:.3f} | {100 * us / total:.1f}% |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main

def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", nargs="+", default=["smollm2", "1b"], choices=["smollm2", "1b"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed generations per fresh process (after a warm-up); its median (llama-bench: mean)")
    parser.add_argument("--threads", type=int, nargs="+", default=DEFAULT_THREADS,
                        help=f"thread counts, each runtime at each (default: {' '.join(map(str, DEFAULT_THREADS))})")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "llamaport-int4-peers")
    parser.add_argument("--checkpoint-1b", type=Path, default=EXPORT_SCALE_1B,
                        help="TinyLlama-1.1B-shaped HF folder (default: export_scale.py's, written if missing)")
    parser.add_argument("--json", type=Path, default=None, help="results file (default: WORK/int4_peers.json)")
    parser.add_argument("--prepare-only", action="store_true", help="make the models, measure nothing")
    parser.add_argument("--peer-huge-pages", action="store_true",
                        help="also run each peer with glibc's transparent huge pages (PEER_HUGE_PAGES)")
    parser.add_argument("--profile", type=Path, default=None, help="profile this llamaport int4 engine and exit")
    parser.add_argument("--genai-worker", default=None, help=argparse.SUPPRESS)  # internal: one genai measurement
    parser.add_argument("--vocab", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.genai_worker:
        print(json.dumps(genai_worker(args.genai_worker, args.vocab, args.prompt_len, args.new_tokens, args.repeats)))
        return
    if args.profile:
        print(profile(args.profile, args.prompt_len, args.new_tokens, args.threads[-1]))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    specs, log = prepare(args.models, args.work, find_assets_dir(REPO), args.checkpoint_1b, args.threads,
                         args.peer_huge_pages)
    if args.prepare_only:
        print(json.dumps(log, indent=1))
        return
    before = _loadavg()
    start = time.perf_counter()
    results, bandwidths = run_rounds(specs, args.rounds, args.prompt_len, args.new_tokens, args.repeats)
    table, rows = report(specs, results, bandwidths, args.prompt_len, args.new_tokens, args.rounds,
                         (before, _loadavg()))
    info = versions(results)
    print("\n" + table + "\n\nversions: " + json.dumps(info))
    out = args.json or args.work / "int4_peers.json"
    out.write_text(json.dumps(dict(rows=rows, bandwidth_gb_s=bandwidths, load_average=[before, _loadavg()],
                                   versions=info, threads=THREADS, prompt_len=args.prompt_len,
                                   new_tokens=args.new_tokens, rounds=args.rounds, preparation=log,
                                   measure_seconds=round(time.perf_counter() - start)), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
