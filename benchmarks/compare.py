"""SmolLM2-135M on this machine, in one run: llamaport engines beside transformers eager, onnxruntime-genai and
llama-cpp-python (each when installed, each with its best settings), measured in interleaved rounds. Writes
benchmarks/RESULTS.md, keeping its hand-written "## Notes" section and what follows it.

    python benchmarks/compare.py [--gguf PATH] [--gguf-f32 PATH] [--prompt-len 128] [--new-tokens 128]
                                [--rounds 5] [--work DIR]

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
KEPT_FROM = "## Notes"  # this heading and everything after it are written by hand


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


class Peer:
    """One runtime, loaded once; `measure()` is one greedy generation: (prefill s, decode tokens/s)."""

    name: str

    def measure(self) -> tuple[float, float]:
        raise NotImplementedError


class LlamaportPeer(Peer):
    def __init__(self, name: str, engine_dir: Path, ids: list[int], new_tokens: int):
        from llamaport.runtime import Engine, SamplingParams

        self.name, self.ids = name, ids
        self.engine = Engine.open(engine_dir, threads=THREADS)
        self.params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)

    def measure(self):
        timings = self.engine.generate(self.ids, self.params).timings
        return timings["time_to_first_token_s"], timings["decode_steps_per_s"]


class TransformersPeer(Peer):
    def __init__(self, name: str, hf_dir: Path, ids: list[int], new_tokens: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(THREADS)
        self.name, self.torch, self.new_tokens = name, torch, new_tokens
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.ids = torch.tensor([ids])

    def measure(self):
        with self.torch.inference_mode():
            start = time.perf_counter()
            self.model(self.ids)
            ttft = time.perf_counter() - start
            start = time.perf_counter()
            n = self.new_tokens
            self.model.generate(self.ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            total = time.perf_counter() - start
        return ttft, (self.new_tokens - 1) / (total - ttft)


class GenaiPeer(Peer):
    def __init__(self, name: str, model_dir: Path, ids: list[int], new_tokens: int):
        import numpy as np
        import onnxruntime_genai as og

        self.name = name
        self.og, self.model, self.new_tokens = og, og.Model(str(model_dir)), new_tokens
        self.ids = np.asarray(ids, np.int32)

    def measure(self):
        params = self.og.GeneratorParams(self.model)
        length = len(self.ids) + self.new_tokens
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        generator = self.og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens(self.ids)
        ttft = time.perf_counter() - start
        while not generator.is_done():
            generator.generate_next_token()
        return ttft, self.new_tokens / (time.perf_counter() - start - ttft)


class LlamaCppPeer(Peer):
    def __init__(self, name: str, gguf: Path, ids: list[int], new_tokens: int):
        from llama_cpp import Llama

        self.name, self.ids, self.new_tokens = name, ids, new_tokens
        self.llm = Llama(str(gguf), n_ctx=len(ids) + new_tokens + 8, n_batch=len(ids), n_threads=THREADS,
                         n_threads_batch=THREADS, verbose=False)

    def measure(self):
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(self.ids)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(self.new_tokens):
            self.llm.eval([int(self.llm.sample(temp=0.0))])
        return ttft, self.new_tokens / (time.perf_counter() - start)


def build_genai(hf_dir: Path, out: Path) -> tuple[float, float]:
    cost = timed_subprocess([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", "HuggingFaceTB/SmolLM2-135M",
                             "-i", str(hf_dir), "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(out / "cache")])
    config_path = out / "genai_config.json"
    config = json.loads(config_path.read_text())
    # Its best setting here: one intra-op thread per core (its default leaves decode at about half speed).
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = THREADS
    config_path.write_text(json.dumps(config, indent=2))
    return cost


PEERS = {"llamaport": LlamaportPeer, "transformers": TransformersPeer, "genai": GenaiPeer, "llama_cpp": LlamaCppPeer}


def measure_once(kind: str, name: str, path: str, prompt_len: int, new_tokens: int) -> dict:
    """Load one runtime, warm it up, time one generation. Runs in a process of its own (see run_rounds)."""
    import numpy as np

    ids = np.random.default_rng(0).integers(100, 49000, prompt_len).tolist()
    peer = PEERS[kind](name, Path(path), ids, new_tokens)
    peer.measure()  # first-run allocations and page faults
    ttft, decode = peer.measure()
    return {"ttft": ttft, "decode": decode}


def run_rounds(specs: list[tuple[str, str, Path]], rounds: int, prompt_len: int, new_tokens: int):
    """Every runtime once per round, each in a fresh process, the order rotated each round.

    Fresh processes, because runtimes sharing one process slow each other down: measured here, a llamaport engine
    decoded ~8% slower beside a loaded onnxruntime-genai model than alone (the idle thread pools of other sessions
    still compete for 2 cores), while alternating processes put the two level. Rotation spreads a shared machine's
    slow and fast spells over all of them. Returns {name: (ttfts, decode rates)} and the best read bandwidth seen
    (GB/s).
    """
    from llamaport.runtime.bench import measure_read_bandwidth

    results = {name: ([], []) for _, name, _ in specs}
    bandwidth = 0.0
    for r in range(rounds):
        for kind, name, path in specs[r % len(specs):] + specs[: r % len(specs)]:
            out = subprocess.run([sys.executable, __file__, "--worker", json.dumps([kind, name, str(path)]),
                                  "--prompt-len", str(prompt_len), "--new-tokens", str(new_tokens)],
                                 check=True, capture_output=True, text=True)
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            results[name][0].append(measured["ttft"])
            results[name][1].append(measured["decode"])
        bandwidth = max(bandwidth, measure_read_bandwidth(THREADS) / 1e9)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[1][-1]:.1f}" for n, v in results.items()), flush=True)
    return results, bandwidth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--gguf-f32", type=Path, default=None, help="The model as an f32 GGUF, for llama-cpp-python.")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure_once(*json.loads(args.worker), args.prompt_len, args.new_tokens)))
        return
    assets = find_assets_dir(REPO)
    gguf = args.gguf or (assets / "smollm2-135m-instruct-q4_1.gguf" if assets else None)
    if gguf is None or not gguf.exists():
        sys.exit("SmolLM2 GGUF not found: pass --gguf or run scripts/fetch_assets.py")
    work = args.work or Path(tempfile.mkdtemp(prefix="llamaport-bench-"))
    hf_dir = work / "smollm2-hf"
    if not hf_dir.exists():
        subprocess.run([sys.executable, "-m", "llamaport.cli", "convert", str(gguf), "-o", str(hf_dir)], check=True)

    # Exports first, each in its own process (wall time and peak RSS).
    engines, exports = {}, []
    for target, max_seq in (("onnx", 512), ("ort", 512), ("ort", 4096)):
        engine = engines[(target, max_seq)] = work / f"llamaport-{target}-{max_seq}"
        if not engine.exists():
            cost = timed_subprocess([sys.executable, "-m", "llamaport.cli", "export", str(gguf), "-o", str(engine),
                                     "--target", target, "--max-seq", str(max_seq)])
            exports.append((f"llamaport export --target {target} --max-seq {max_seq}", *cost))
    genai_dir = work / "genai-fp32"
    if _importable("onnxruntime_genai") and not genai_dir.exists():
        exports.append(("onnxruntime-genai builder -p fp32", *build_genai(hf_dir, genai_dir)))

    n = args.new_tokens
    specs = [("llamaport", f"llamaport {t} fp32, max_seq {m}", d) for (t, m), d in engines.items()]
    specs.append(("transformers", "transformers eager fp32 (generate)", hf_dir))
    if _importable("onnxruntime_genai"):
        specs.append(("genai", f"onnxruntime-genai fp32 (intra_op_num_threads={THREADS})", genai_dir))
    own_bytes = {}  # a GGUF holds each weight once (the tied head too): its size is what a decode step reads
    if _importable("llama_cpp"):
        for name, path in ((f"llama-cpp-python f32 GGUF (n_threads={THREADS})", args.gguf_f32),
                           (f"llama-cpp-python Q4_1 GGUF (n_threads={THREADS}; 4-bit, not comparable)", gguf)):
            if path:
                specs.append(("llama_cpp", name, path))
                own_bytes[name] = path.stat().st_size
    results, bandwidth = run_rounds(specs, args.rounds, args.prompt_len, n)

    from llamaport.runtime.bench import kv_bytes_per_token, weight_bytes

    config = json.loads((engines[("ort", 512)] / "manifest.json").read_text())["config"]
    bytes_per_token = weight_bytes(engines[("ort", 512)]) + kv_bytes_per_token(config, args.prompt_len + n / 2, 4)
    lines = [
        "# Benchmarks: SmolLM2-135M-Instruct",
        "",
        f"Written by `python benchmarks/compare.py` on {platform.machine()} with {THREADS} cores, "
        f"prompt {args.prompt_len} tokens, {n} new tokens, batch 1, greedy, {args.rounds} interleaved rounds (each "
        f"runtime once per round in a fresh process, order rotated). Measured read bandwidth (ONNX Runtime "
        f"ReduceSum, {THREADS} threads, best of the rounds): {bandwidth:.1f} GB/s; one fp32 decode step reads "
        f"{bytes_per_token / 1e6:.0f} MB (weights + KV), so the fp32 roofline is "
        f"{bandwidth * 1e9 / bytes_per_token:.0f} tokens/s.",
        "",
        "| runtime | prefill tok/s (median) | decode tok/s (median) | decode tok/s (best) "
        "| % of roofline (median; its own bytes/step) | TTFT ms (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (ttfts, decodes) in results.items():
        ttft, decode = statistics.median(ttfts), statistics.median(decodes)
        roofline = 100 * decode * own_bytes.get(name, bytes_per_token) / (bandwidth * 1e9)
        lines.append(f"| {name} | {args.prompt_len / ttft:.0f} | {decode:.1f} | {max(decodes):.1f} | "
                     f"{roofline:.0f}% | {ttft * 1000:.0f} |")
    if exports:
        lines += ["", "| export | wall s | peak RSS MB |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {wall:.1f} | {rss:.0f} |" for name, wall, rss in exports]
    missing = [name for name, mod in (("onnxruntime-genai", "onnxruntime_genai"), ("llama-cpp-python", "llama_cpp"))
               if not _importable(mod)]
    if missing:
        lines += ["", f"Not installed for this run: {', '.join(missing)}."]
    results_md = REPO / "benchmarks" / "RESULTS.md"
    kept = ""  # sections written by hand or by other scripts (notes, GPU runs on a lent machine) survive a re-run
    if results_md.exists() and KEPT_FROM in results_md.read_text():
        kept = "\n" + results_md.read_text()[results_md.read_text().index(KEPT_FROM):]
    results_md.write_text("\n".join(lines) + "\n" + kept)
    print("\n".join(lines))


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
