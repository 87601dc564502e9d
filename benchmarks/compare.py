"""SmolLM2-135M on this machine, in one run: llamaport engines beside transformers eager, onnxruntime-genai and
llama-cpp-python (each when installed, each with its best settings). Writes benchmarks/RESULTS.md.

    python benchmarks/compare.py [--gguf PATH] [--gguf-f32 PATH] [--prompt-len 128] [--new-tokens 128] [--work DIR]

llama-cpp-python runs the asset GGUF (Q4_1: a quarter of fp32's bytes, so not the same precision) and, given
`--gguf-f32`, the same model in f32 for a like-for-like row. Make that file with llama.cpp's own converter (in the
llama-cpp-python sdist: vendor/llama.cpp/convert_hf_to_gguf.py DIR --outtype f32) from the HF folder this script
converts into --work.

Also records export wall time and peak RSS for `llamaport export` and onnxruntime-genai's model builder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from fetch_assets import find_assets_dir  # noqa: E402

THREADS = os.cpu_count() or 1
GPU_SECTION = "## GPU"


_MEASURE = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
)


def timed_subprocess(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one command, measured in a fresh parent so earlier children do not count."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], check=True, capture_output=True, text=True)
    wall, rss = out.stdout.split()
    return float(wall), float(rss)


def bench_llamaport(engine_dir: Path, prompt_len: int, new_tokens: int, tries: int = 2) -> dict:
    """The best of `tries` runs of `llamaport bench` (each a median of 3): this machine is shared and noisy."""
    reports = []
    for _ in range(tries):
        out = subprocess.run(
            [sys.executable, "-m", "llamaport.cli", "bench", str(engine_dir), "--prompt-len", str(prompt_len),
             "--new-tokens", str(new_tokens), "--json"], check=True, capture_output=True, text=True,
        )
        reports.append(json.loads(out.stdout))
    best = max(reports, key=lambda r: r["decode_tokens_per_s"])
    best["measured_read_bandwidth_gb_s"] = max(r["measured_read_bandwidth_gb_s"] for r in reports)
    return best


def bench_transformers(hf_dir: Path, prompt_len: int, new_tokens: int) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.from_numpy(np.random.default_rng(0).integers(100, 49000, (1, prompt_len)))
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, do_sample=False)
        prefill = []
        for _ in range(3):
            start = time.perf_counter()
            model(ids)
            prefill.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        total = time.perf_counter() - start
    ttft = statistics.median(prefill)
    return {"prefill_tokens_per_s": prompt_len / ttft, "decode_tokens_per_s": (new_tokens - 1) / (total - ttft),
            "time_to_first_token_s": ttft}


def build_genai(hf_dir: Path, out: Path) -> tuple[float, float] | None:
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return None
    cost = timed_subprocess([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", "HuggingFaceTB/SmolLM2-135M",
                             "-i", str(hf_dir), "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(out / "cache")])
    config_path = out / "genai_config.json"
    config = json.loads(config_path.read_text())
    # Its best setting here: one intra-op thread per core (its default leaves decode at about half speed).
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = THREADS
    config_path.write_text(json.dumps(config, indent=2))
    return cost


def bench_genai(model_dir: Path, prompt_len: int, new_tokens: int) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    ids = np.random.default_rng(0).integers(100, 49000, prompt_len).astype(np.int32)

    def run(n: int) -> tuple[float, float]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=prompt_len + n, min_length=prompt_len + n, do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        first = time.perf_counter() - start
        while not generator.is_done():
            generator.generate_next_token()
        return first, time.perf_counter() - start

    run(4)
    firsts, totals = zip(*[run(new_tokens) for _ in range(6)])  # as many runs as llamaport's 2 x 3
    ttft = statistics.median(firsts)
    decode = max(new_tokens / (total - first) for first, total in zip(firsts, totals))
    return {"prefill_tokens_per_s": prompt_len / ttft, "decode_tokens_per_s": decode,
            "time_to_first_token_s": ttft}


def bench_llama_cpp(gguf: Path, prompt_len: int, new_tokens: int, tries: int = 3) -> dict | None:
    """Best of `tries` (prefill, decode) runs, one thread per core for both phases, greedy."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    import numpy as np

    llm = Llama(str(gguf), n_ctx=prompt_len + new_tokens + 8, n_batch=prompt_len, n_threads=THREADS,
                n_threads_batch=THREADS, verbose=False)
    ids = np.random.default_rng(0).integers(100, 49000, prompt_len).tolist()
    runs = []
    for _ in range(tries):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([int(llm.sample(temp=0.0))])
        runs.append((ttft, time.perf_counter() - start))
    ttft = statistics.median(t for t, _ in runs)
    # A GGUF holds each weight once (the tied head too), so its size is what one decode step reads, near enough.
    return {"prefill_tokens_per_s": prompt_len / ttft, "decode_tokens_per_s": max(new_tokens / d for _, d in runs),
            "time_to_first_token_s": ttft, "bytes_per_decode_step": gguf.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--gguf-f32", type=Path, default=None, help="The model as an f32 GGUF, for llama-cpp-python.")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    assets = find_assets_dir(REPO)
    gguf = args.gguf or (assets / "smollm2-135m-instruct-q4_1.gguf" if assets else None)
    if gguf is None or not gguf.exists():
        sys.exit("SmolLM2 GGUF not found: pass --gguf or run scripts/fetch_assets.py")
    work = args.work or Path(tempfile.mkdtemp(prefix="llamaport-bench-"))
    hf_dir = work / "smollm2-hf"
    if not hf_dir.exists():
        subprocess.run([sys.executable, "-m", "llamaport.cli", "convert", str(gguf), "-o", str(hf_dir)], check=True)

    rows, exports = [], []
    for target, max_seq in (("onnx", 512), ("ort", 512), ("ort", 4096)):
        engine = work / f"llamaport-{target}-{max_seq}"
        if not engine.exists():
            cost = timed_subprocess([sys.executable, "-m", "llamaport.cli", "export", str(gguf), "-o", str(engine),
                                     "--target", target, "--max-seq", str(max_seq)])
            exports.append((f"llamaport export --target {target} --max-seq {max_seq}", *cost))
        report = bench_llamaport(engine, args.prompt_len, args.new_tokens)
        rows.append((f"llamaport {target} fp32, max_seq {max_seq}", report))
    bandwidth = max(r["measured_read_bandwidth_gb_s"] for _, r in rows)
    bytes_per_token = rows[0][1]["bytes_per_decode_step"]

    rows.append(("transformers eager fp32 (generate)", bench_transformers(hf_dir, args.prompt_len, args.new_tokens)))
    genai_dir = work / "genai-fp32"
    cost = build_genai(hf_dir, genai_dir) if not genai_dir.exists() else (None, None)
    if cost is not None:
        if cost[0] is not None:
            exports.append(("onnxruntime-genai builder -p fp32", *cost))
        rows.append((f"onnxruntime-genai fp32 (intra_op_num_threads={THREADS})",
                     bench_genai(genai_dir, args.prompt_len, args.new_tokens)))
    if args.gguf_f32:
        llama_cpp = bench_llama_cpp(args.gguf_f32, args.prompt_len, args.new_tokens)
        if llama_cpp:
            rows.append((f"llama-cpp-python f32 GGUF (n_threads={THREADS})", llama_cpp))
    llama_cpp = bench_llama_cpp(gguf, args.prompt_len, args.new_tokens)
    if llama_cpp:
        rows.append((f"llama-cpp-python Q4_1 GGUF (n_threads={THREADS}; 4-bit, not comparable)", llama_cpp))

    lines = [
        "# Benchmarks: SmolLM2-135M-Instruct",
        "",
        f"Written by `python benchmarks/compare.py` on {platform.machine()} with {THREADS} cores, "
        f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, batch 1, greedy. "
        f"Measured read bandwidth (ONNX Runtime ReduceSum, {THREADS} threads): {bandwidth:.1f} GB/s; one fp32 decode "
        f"step reads {bytes_per_token / 1e6:.0f} MB (weights + KV), so the fp32 roofline is "
        f"{bandwidth * 1e9 / bytes_per_token:.0f} tokens/s.",
        "",
        "| runtime | prefill tok/s | decode tok/s | % of roofline (its own bytes/step) | TTFT ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows:
        roofline = 100 * r["decode_tokens_per_s"] * r.get("bytes_per_decode_step", bytes_per_token) / (bandwidth * 1e9)
        lines.append(f"| {name} | {r['prefill_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | {roofline:.0f}% | "
                     f"{r['time_to_first_token_s'] * 1000:.0f} |")
    if exports:
        lines += ["", "| export | wall s | peak RSS MB |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {wall:.1f} | {rss:.0f} |" for name, wall, rss in exports]
    missing = [name for name, mod in (("onnxruntime-genai", "onnxruntime_genai"), ("llama-cpp-python", "llama_cpp"))
               if not _importable(mod)]
    if missing:
        lines += ["", f"Not installed for this run: {', '.join(missing)}."]
    results = REPO / "benchmarks" / "RESULTS.md"
    kept = ""  # sections recorded by other scripts (GPU runs on a lent machine) survive a CPU re-run
    if results.exists() and GPU_SECTION in results.read_text():
        kept = "\n" + results.read_text()[results.read_text().index(GPU_SECTION):]
    results.write_text("\n".join(lines) + "\n" + kept)
    print("\n".join(lines))


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
