"""Decode attention on a CUDA GPU: GB/s of the Triton GQA kernel vs PyTorch SDPA, against measured copy bandwidth.

    python benchmarks/gpu_kernels.py [--dtype fp16] [--out results.json]

Llama-2-7B (32/32 heads) and Llama-3-8B (32/8) attention, head_dim 128, batch 1 and 8, filled lengths 1K..32K in
a static cache of 32K (the kernel must read only the filled part). One decode step of the op: RoPE + cache write,
split-K attention with RoPE fused, merge with the cache write fused (two launches). SDPA gets the same q and the
filled cache slice (enable_gqa), so it does less work (no RoPE, no cache write). Bytes counted: K and V of the
filled length, read once. Two timers (medians), since neither alone measures HBM for every row:
- `--timer graph` (default): triton.testing.do_bench_cudagraph, replays of a captured CUDA graph: the kernels' GPU
  time without host launch cost (what a token costs inside the engine's decode graph). The same buffers every
  replay, so caches smaller than the 50 MB L2 (B=1 / 8 kv heads / 8K = 33 MB) are partly read from L2.
- `--timer flush`: triton.testing.do_bench, which clears the L2 before each run; launched from Python every run,
  so at short lengths it measures the host's launch path (two Triton launches cost more CPU time than the GPU
  work), not the kernel.

    python benchmarks/gpu_kernels.py --sweep     # decode tuning knobs at a few long-cache shapes
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
import triton

from llamaport.plugins.triton_attention import gqa_attention_triton
from llamaport.runtime.bench import cuda_copy_bandwidth  # the same probe `llamaport bench` reports against

SHAPES = {"llama2_7b": (32, 32, 128), "llama3_8b": (32, 8, 128)}
LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
TIMERS = {  # fn -> median milliseconds
    "graph": lambda fn: triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median"),
    "flush": lambda fn: triton.testing.do_bench(fn, rep=100, return_mode="median"),
}


def bench_case(heads: int, kv_heads: int, dim: int, batch: int, length: int, max_seq: int, dtype, timer: str,
               with_sdpa=True, **knobs) -> dict:
    q = torch.randn(batch, 1, heads * dim, device="cuda", dtype=dtype)
    k = torch.randn(batch, 1, kv_heads * dim, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    cos = torch.randn(batch, 1, dim // 2, device="cuda", dtype=dtype)  # (B, 1, D/2): values do not matter here
    sin = torch.randn_like(cos)
    k_cache = torch.randn(batch, kv_heads, max_seq, dim, device="cuda", dtype=dtype)  # (B, H_kv, S_max, D)
    v_cache = torch.randn_like(k_cache)
    past = torch.full((batch,), length - 1, dtype=torch.int64, device="cuda")  # the new token makes `length`
    ours = TIMERS[timer](lambda: gqa_attention_triton(q, k, v, cos, sin, k_cache, v_cache, past, **knobs))
    qh = q.view(batch, 1, heads, dim).transpose(1, 2)  # (B, H, 1, D)
    keys, values = k_cache[:, :, :length], v_cache[:, :, :length]  # (B, H_kv, T, D) views of the filled part
    kv_bytes = 2 * batch * kv_heads * length * dim * k_cache.element_size()
    if not with_sdpa:
        return {"batch": batch, "length": length, "triton_us": ours * 1e3,
                "triton_gb_s": kv_bytes / (ours * 1e-3) / 1e9}
    sdpa = TIMERS[timer](lambda: F.scaled_dot_product_attention(qh, keys, values, enable_gqa=True))
    return {"batch": batch, "length": length, "triton_us": ours * 1e3, "sdpa_us": sdpa * 1e3,
            "triton_gb_s": kv_bytes / (ours * 1e-3) / 1e9, "sdpa_gb_s": kv_bytes / (sdpa * 1e-3) / 1e9}


def sweep(dtype, copy: float, timer: str) -> None:
    """Decode knobs (programs per SM -> splits, BLOCK_N, warps, pipeline stages) at long-cache shapes."""
    from llamaport.plugins.triton_attention import decode_splits

    cases = [("llama3_8b", 1, 16384), ("llama3_8b", 1, 32768), ("llama3_8b", 8, 8192), ("llama2_7b", 1, 8192)]
    print(f"{'shape':10} {'B':>2} {'len':>6} {'per_sm':>6} {'block_n':>7} {'warps':>5} {'stages':>6} {'us':>7} "
          f"{'%copy':>6}")
    for name, batch, length in cases:
        heads, kv_heads, dim = SHAPES[name]
        for per_sm in (4, 8):
            for block_n in (64, 128):
                splits = decode_splits(batch, kv_heads, LENGTHS[-1], torch.device("cuda"), block_n, per_sm)
                for warps in (4, 8):
                    for stages in (2, 3):
                        row = bench_case(heads, kv_heads, dim, batch, length, LENGTHS[-1], dtype, timer,
                                         with_sdpa=False, num_splits=splits, block_n=block_n, decode_warps=warps,
                                         decode_stages=stages)
                        print(f"{name:10} {batch:2} {length:6} {per_sm:6} {block_n:7} {warps:5} {stages:6} "
                              f"{row['triton_us']:7.1f} {100 * row['triton_gb_s'] * 1e9 / copy:6.1f}", flush=True)
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--sweep", action="store_true", help="time the decode kernel's tuning knobs instead")
    parser.add_argument("--timer", default="graph", choices=sorted(TIMERS), help="see the module docstring")
    args = parser.parse_args()
    copy = cuda_copy_bandwidth()
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
          f"copy bandwidth {copy / 1e9:.0f} GB/s (read + write)")
    if args.sweep:
        return sweep(DTYPES[args.dtype], copy, args.timer)
    rows = []
    print(f"{'shape':10} {'B':>2} {'len':>6} {'triton us':>10} {'GB/s':>6} {'%copy':>6} {'sdpa us':>9} {'GB/s':>6} "
          f"{'%copy':>6}")
    for name, (heads, kv_heads, dim) in SHAPES.items():
        for batch in (1, 8):
            for length in LENGTHS:
                case = bench_case(heads, kv_heads, dim, batch, length, LENGTHS[-1], DTYPES[args.dtype], args.timer)
                row = {"shape": name, **case}
                row["triton_pct_copy"] = 100 * row["triton_gb_s"] * 1e9 / copy
                row["sdpa_pct_copy"] = 100 * row["sdpa_gb_s"] * 1e9 / copy
                rows.append(row)
                print(f"{name:10} {batch:2} {length:6} {row['triton_us']:10.1f} {row['triton_gb_s']:6.0f} "
                      f"{row['triton_pct_copy']:6.1f} {row['sdpa_us']:9.1f} {row['sdpa_gb_s']:6.0f} "
                      f"{row['sdpa_pct_copy']:6.1f}")
                torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "copy_gb_s": copy / 1e9, "dtype": args.dtype,
                       "timer": args.timer, "torch": torch.__version__, "triton": triton.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
