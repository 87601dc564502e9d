"""The eager static-cache Llama on a CUDA GPU: decode tokens/s at two cache capacities, and % of HBM bandwidth.

    python benchmarks/gpu_eager.py --model smollm2-135m-instruct-q4_1.gguf [--dtype fp16]
    python benchmarks/gpu_eager.py --random-config config.json   # same shapes, random weights (timing only)

Checks that the reference model runs on CUDA and that a decode step's cost does not grow with the cache's
capacity (max_seq 512 vs 4096 at the same filled length). Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from llamaport.models import LlamaConfig, LlamaForCausalLM, load_model

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def copy_bandwidth(device: str, megabytes: int = 2048) -> float:
    """Bytes/s read+written by a device-to-device copy (the attainable HBM bandwidth)."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * 10 / (time.perf_counter() - start)


def decode_rate(model, max_seq: int, prompt_len: int, steps: int, device: str) -> float:
    cache = model.new_cache(1, max_seq, device=device)
    ids = torch.randint(100, 1000, (1, prompt_len), device=device)
    past = torch.zeros(1, dtype=torch.int64, device=device)
    with torch.inference_mode():
        logits, cache = model(ids, past, cache, last_only=True)
        past = past + prompt_len
        token = logits[:, -1].argmax(-1, keepdim=True)
        for i in range(steps + 5):
            if i == 5:
                torch.cuda.synchronize()
                start = time.perf_counter()
            logits, cache = model(token, past, cache, last_only=True)
            token, past = logits[:, -1].argmax(-1, keepdim=True), past + 1
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="any checkpoint the loaders read")
    source.add_argument("--random-config", help="config.json: random weights of that shape (speed does not need real ones)")
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=128)
    args = parser.parse_args()
    device = "cuda"
    if args.model:
        model = load_model(args.model, DTYPES[args.dtype]).to(device)
    else:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig.from_json(args.random_config)).to(DTYPES[args.dtype]).eval()
        model.requires_grad_(False)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = copy_bandwidth(device)
    for max_seq in (512, 4096):
        rate = decode_rate(model, max_seq, args.prompt_len, args.steps, device)
        print(json.dumps({
            "device": torch.cuda.get_device_name(), "dtype": args.dtype, "max_seq": max_seq,
            "decode_tokens_per_s": round(rate, 1), "weight_mb": round(weight_bytes / 1e6),
            "copy_bandwidth_tb_s": round(bandwidth / 1e12, 2),
            "roofline_percent": round(100 * rate * weight_bytes / bandwidth, 2),
        }))


if __name__ == "__main__":
    main()
