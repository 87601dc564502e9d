"""Export at scale: wall time and peak RSS of `llamaport export` on random-weight Llama checkpoints.

    python benchmarks/export_scale.py --models 1b          # TinyLlama-1.1B shape (22 layers, GQA 32/4)
    python benchmarks/export_scale.py --models 1b 7b       # + Llama-2-7B shape (32 layers, MHA), ~13.5 GB fp16
    python benchmarks/export_scale.py --models 1b --targets ort --peers   # + onnxruntime-genai's builder
    python benchmarks/export_scale.py --models 13b --targets ort --quant int4   # Llama-2-13B shape (~26 GB), int4

Checkpoints are written with random weights (fp16 safetensors, sharded) under --workdir (default: a folder in
/tmp), never into the repository, and reused between runs. Every export runs in a fresh process; its peak RSS is
the kernel's (os.wait4 rusage ru_maxrss), so it counts ONNX Runtime's and torch's allocations alike. Linux keeps
ru_maxrss across exec, so a child would inherit its parent's size: checkpoints are written in a subprocess of
their own and this process never imports torch. The memory
target (issue 8): peak RSS <= written engine size + the largest layer in fp32 + 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SHAPES = {
    # TinyLlama-1.1B: 22 layers, hidden 2048, ffn 5632, heads 32 / kv 4, vocab 32000
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    # Llama-2-7B: 32 layers, hidden 4096, ffn 11008, heads 32 / kv 32, vocab 32000
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    # Llama-2-13B: 40 layers, hidden 5120, ffn 13824, heads 40 / kv 40, vocab 32000; ~26 GB fp16, more than 24 GB RAM
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000),
}
SHARD_BYTES = 2 << 30  # shards of at most 2 GiB (the real 7B has two of ~10 and 3.5 GB; smaller ones cap the
# writer's memory here, and the loader reads per tensor either way)


@dataclass
class Run:
    name: str
    seconds: float
    peak_rss_gb: float
    returncode: int
    output: str


def config_dict(shape: dict) -> dict:
    return dict(architectures=["LlamaForCausalLM"], model_type="llama", max_position_embeddings=4096,
                rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                hidden_act="silu", torch_dtype="float16", **shape)


def tensor_shapes(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, f, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    d = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * d
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(shape["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def write_checkpoint(folder: Path, shape: dict, seed: int = 0) -> Path:
    """A random fp16 Llama checkpoint in Hugging Face layout (sharded safetensors + index); reused if complete."""
    import torch
    from safetensors.torch import save_file

    if (folder / "model.safetensors.index.json").exists():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # Shards planned from the shapes first, then each generated and saved on its own: one shard in memory (a 13B
    # checkpoint is more than this machine's RAM).
    plan: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in tensor_shapes(shape):
        nbytes = 2 * _numel(dims)
        if size + nbytes > SHARD_BYTES and plan[-1]:
            plan.append([])
            size = 0
        plan[-1].append((name, dims))
        size += nbytes
    generator = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for i, entries in enumerate(plan):
        shard = {}
        for name, dims in entries:
            if name.endswith("norm.weight"):
                tensor = 1 + 0.1 * torch.randn(dims, generator=generator)
            else:
                tensor = 0.02 * torch.randn(dims, generator=generator)  # transformers' initializer_range
            shard[name] = tensor.to(torch.float16)
        file = f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
        save_file(shard, str(partial / file), metadata={"format": "pt"})
        total += sum(t.nbytes for t in shard.values())
        weight_map.update({name: file for name in shard})
        del shard
    (partial / "config.json").write_text(json.dumps(config_dict(shape), indent=2))
    (partial / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    os.replace(partial, folder)
    return folder


def add_tokenizer(folder: Path, vocab: Path | None) -> None:
    """Tokenizer files from a vocabulary GGUF (Llama 2's, 32000 tokens), which onnxruntime-genai's builder needs."""
    if vocab is None or not vocab.exists() or (folder / "tokenizer_config.json").exists():
        return
    from llamaport.models import read_checkpoint

    for name, content in read_checkpoint(vocab).tokenizer_files.items():
        (folder / name).write_bytes(content)


def _default_vocab() -> Path | None:
    root = Path(os.environ.get("LLAMAPORT_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
    path = root / "llama-spm-vocab.gguf"
    return path if path.exists() else None


def folder_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9


def measure(name: str, command: list[str], timeout: float) -> Run:
    """Run `command` in a fresh process; wall time and its own peak RSS (ru_maxrss of exactly that child)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        log.seek(0)
        output = log.read()
    code = os.waitstatus_to_exitcode(status)
    return Run(name, seconds, usage.ru_maxrss * 1024 / 1e9, code, output[-2000:])


def largest_layer_fp32_gb(shape: dict) -> float:
    """The larger of one decoder layer and the embedding table (the reference's biggest single load), in fp32."""
    shapes = tensor_shapes(shape)
    layer = sum(_numel(d) for n, d in shapes if n.startswith("model.layers.0."))
    return 4 * max(layer, shape["vocab_size"] * shape["hidden_size"]) / 1e9


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def llamaport_export(checkpoint: Path, out: Path, target: str, dtype: str, max_seq: int, skip_verify: bool,
                     timeout: float, quant: list[str] = ()) -> tuple[Run, dict | None]:
    """`quant`: extra export flags (e.g. --quant int4 --method rtn --group-size 128)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "llamaport.cli", "export", str(checkpoint), "-o", str(out), "--target", target,
               "--dtype", dtype, "--max-seq", str(max_seq), "--quiet", *quant]
    command += ["--skip-verify"] if skip_verify else []
    run = measure(" ".join(["llamaport", target, dtype, *quant]), command, timeout)
    manifest = json.loads((out / "manifest.json").read_text()) if run.returncode == 0 else None
    return run, manifest


def genai_builder(checkpoint: Path, out: Path, dtype: str, timeout: float) -> Run | None:
    """onnxruntime-genai's model builder on the same checkpoint (no verification), if it is installed."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime_genai") is None:  # not imported here: it would grow this process
        return None
    shutil.rmtree(out, ignore_errors=True)
    precision = {"fp32": "fp32", "fp16": "fp16"}[dtype]
    cache = out.with_name(out.name + "-cache")
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(cache)]
    run = measure(f"onnxruntime-genai builder {dtype}", command, timeout)
    shutil.rmtree(cache, ignore_errors=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["1b"], choices=sorted(SHAPES))
    parser.add_argument("--checkpoint", type=Path, help="an existing Hugging Face folder instead of --models")
    parser.add_argument("--targets", nargs="+", default=["ort", "onnx"])
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--max-seq", type=int, default=2048)
    parser.add_argument("--skip-verify", action="store_true")
    parser.add_argument("--peers", action="store_true", help="also run onnxruntime-genai's builder if importable")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "llamaport-export-scale")
    parser.add_argument("--keep-engines", action="store_true")
    parser.add_argument("--vocab", type=Path, default=_default_vocab(),
                        help="vocabulary GGUF whose tokenizer files go beside the weights (default: Llama 2's asset)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--quant", choices=["int4"], help="export weight-only int4 (with --method, --group-size)")
    parser.add_argument("--method", default="rtn")
    parser.add_argument("--group-size", default="128")
    args = parser.parse_args()
    quant = ["--quant", args.quant, "--method", args.method, "--group-size", args.group_size] if args.quant else []
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in [args.checkpoint.name] if args.checkpoint else args.models:
        start = time.perf_counter()
        if args.checkpoint:
            checkpoint = args.checkpoint
            config = json.loads((checkpoint / "config.json").read_text())
            shape = {k: config[k] for k in SHAPES["1b"]}
        else:
            shape = SHAPES[model]
            checkpoint = args.workdir / f"random-{model}"
            subprocess.run([sys.executable, __file__, "--write-checkpoint", model, str(checkpoint),
                            str(args.vocab or "")], check=True)
        print(f"[{model}] checkpoint {folder_gb(checkpoint):.2f} GB ({time.perf_counter() - start:.0f} s)", flush=True)
        for target in args.targets:
            out = args.workdir / f"engine-{model}-{target}"
            run, manifest = llamaport_export(checkpoint, out, target, args.dtype, args.max_seq, args.skip_verify,
                                             args.timeout, quant)
            engine = folder_gb(out) if out.exists() else float("nan")
            budget = engine + largest_layer_fp32_gb(shape) + 1.0
            verification = (manifest or {}).get("verification") or {}
            row = dict(model=model, runner=run.name, seconds=round(run.seconds, 1),
                       peak_rss_gb=round(run.peak_rss_gb, 2),
                       engine_gb=round(engine, 2), target_gb=round(budget, 2), met=run.peak_rss_gb <= budget,
                       returncode=run.returncode, verified=verification.get("passed"),
                       max_abs_logit_diff=verification.get("max_abs_logit_diff"),
                       top1=verification.get("top1_agreement"))
            rows.append(row)
            print(json.dumps(row), flush=True)
            if run.returncode != 0:
                print(run.output, flush=True)
            if not args.keep_engines:
                shutil.rmtree(out, ignore_errors=True)
        if args.peers:
            out = args.workdir / f"genai-{model}"
            run = genai_builder(checkpoint, out, args.dtype, args.timeout)
            if run is None:
                print("onnxruntime-genai is not installed (benchmarks/install_peers.sh)", flush=True)
            else:
                oom = run.returncode in (-9, 137)
                row = dict(model=model, runner=run.name, seconds=round(run.seconds, 1),
                           peak_rss_gb=round(run.peak_rss_gb, 2), returncode=run.returncode,
                           result="killed (out of memory)" if oom else ("ok" if run.returncode == 0 else "failed"))
                rows.append(row)
                print(json.dumps(row), flush=True)
                if run.returncode != 0:
                    print(run.output, flush=True)
            shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-checkpoint"]:  # in its own process: see the module docstring
        model, folder, vocab = sys.argv[2:5]
        add_tokenizer(write_checkpoint(Path(folder), SHAPES[model]), Path(vocab) if vocab else None)
    else:
        main()
