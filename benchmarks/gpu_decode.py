"""End-to-end decode on a CUDA GPU: our eager engine with Triton kernels + CUDA graphs, the same engine with the
reference attention, and Hugging Face transformers with a static cache and torch.compile, same weights, same run.

    python benchmarks/gpu_decode.py --model smollm2 --batch 1 8 [--dtype fp16] [--rounds 3] [--out rows.json]

Random weights of the real shapes (speed does not need real ones): SmolLM2-135M (30 layers, hidden 576, ffn 1536,
9/3 heads, vocab 49152, tied) and TinyLlama-1.1B (22 layers, 2048, 5632, 32/4, vocab 32000). Written once with
transformers' save_pretrained; our engine loads that folder, transformers keeps its own copy.

Decode tokens/s = batch * steps / time of the decode steps (prefill excluded), median over rounds:
- ours: `Engine.generate` timings (the real engine loop: logits to the host, numpy greedy sampling per step);
- transformers: `generate(..., cache_implementation="static")`, whose decode forward generate() compiles itself
  (CompileConfig(fullgraph=True, mode="reduce-overhead"): torch.compile with CUDA graphs, the fast path its Llama
  docs recommend), timed by a stopping criterion that synchronizes and stamps each step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

SHAPES = {
    "smollm2": dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "tinyllama": dict(num_hidden_layers=22, hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False, rope_theta=10000.0),
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def write_random_model(name: str, folder: str, dtype) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[name], max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         initializer_range=0.02)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)


def ours(folder: str, kernels: str, batch: int, prompt_len: int, steps: int, rounds: int, dtype: str, max_seq: int):
    from llamaport.models import load_model
    from llamaport.runtime.backends.eager_backend import EagerBackend
    from llamaport.runtime.engine import Engine
    from llamaport.runtime.sampling import SamplingParams

    model = load_model(folder)
    backend = EagerBackend(model, max_seq, device="cuda", kernels=kernels, dtype=dtype)
    engine = Engine(backend, None, model.config.to_hf_dict(), None)
    prompts = torch.randint(100, model.config.vocab_size - 1, (batch, prompt_len)).tolist()
    params = SamplingParams(max_new_tokens=steps + 1, temperature=0.0, ignore_eos=True)
    engine.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True))  # warm + capture
    rates, tokens = [], None
    for _ in range(rounds):
        results = engine.generate(prompts, params)
        rates.append(results[0].timings["decode_steps_per_s"] * batch)
        tokens = [r.token_ids for r in results]
    del engine, backend, model
    torch.cuda.empty_cache()
    return statistics.median(rates), rates, tokens


class _StepClock:
    """A stopping criterion that never stops: it synchronizes and stamps the time after every generated token."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def transformers_static_compiled(folder: str, batch: int, prompt_len: int, steps: int, rounds: int, dtype):
    from transformers import CompileConfig, LlamaForCausalLM, StoppingCriteriaList

    model = LlamaForCausalLM.from_pretrained(folder, dtype=dtype).to("cuda").eval()
    # generate() compiles the decode forward itself when the cache is static; this asks for the docs' settings
    # (compiling model.forward by hand instead trips over generate's reuse of CUDA-graph outputs in 5.17).
    compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead")
    ids = torch.randint(100, model.config.vocab_size - 1, (batch, prompt_len), device="cuda")
    mask = torch.ones_like(ids)

    def run():
        clock = _StepClock()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=steps + 1, min_new_tokens=steps + 1,
                             do_sample=False, cache_implementation="static", compile_config=compile_config,
                             stopping_criteria=StoppingCriteriaList([clock]), pad_token_id=0)
        # stamps[0] follows the prefill's token; the rest are decode steps
        return batch * (len(clock.stamps) - 1) / (clock.stamps[-1] - clock.stamps[0]), out

    start = time.perf_counter()
    for _ in range(2):  # compile, then record the CUDA graphs
        run()
    warm_s = time.perf_counter() - start
    rates = [run()[0] for _ in range(rounds)]
    del model
    torch.cuda.empty_cache()
    return statistics.median(rates), rates, warm_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-seq", type=int, default=1024, help="our static cache capacity")
    parser.add_argument("--skip", nargs="*", default=[], choices=["reference", "transformers"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import transformers
    import triton

    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
          f"transformers {transformers.__version__}  model {args.model}  dtype {args.dtype}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_random_model(args.model, folder, DTYPES[args.dtype])
        for batch in args.batch:
            common = (batch, args.prompt_len, args.steps, args.rounds)
            row = {"model": args.model, "batch": batch, "dtype": args.dtype}
            row["triton_tok_s"], row["triton_rounds"], _ = ours(folder, "triton", *common, args.dtype, args.max_seq)
            print(json.dumps(row), flush=True)
            if "reference" not in args.skip:
                row["reference_tok_s"], row["reference_rounds"], _ = ours(folder, "reference", *common, args.dtype,
                                                                          args.max_seq)
                print(json.dumps(row), flush=True)
            if "transformers" not in args.skip:
                hf, hf_rounds, warm_s = transformers_static_compiled(folder, *common, DTYPES[args.dtype])
                row.update(hf_static_compiled_tok_s=hf, hf_rounds=hf_rounds, hf_warmup_s=warm_s,
                           speedup_vs_hf=row["triton_tok_s"] / hf)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"{'model':10} {'B':>2} {'triton+graph':>12} {'reference':>10} {'HF static+compile':>18} {'x HF':>6}")
    for r in rows:
        print(f"{r['model']:10} {r['batch']:2} {r['triton_tok_s']:12.1f} {r.get('reference_tok_s', 0):10.1f} "
              f"{r.get('hf_static_compiled_tok_s', 0):18.1f} {r.get('speedup_vs_hf', 0):6.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
