"""`llamaport bench`: prefill and decode speed, time to first token, peak memory, and decode as a share of the
machine's measured read bandwidth (the roofline for memory-bound decoding)."""

from __future__ import annotations

import functools
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from llamaport.enginedir import GRAPH, DType
from llamaport.errors import LlamaportError

from . import validate
from .engine import Engine
from .sampling import SamplingParams


def measure_read_bandwidth(threads: int, megabytes: int = 1024, repeats: int = 10) -> float:
    """Bytes/s that ONNX Runtime's CPU kernels read with `threads` threads: the best of `repeats` ReduceSums
    over a buffer far larger than the caches (the best run is the attainable bandwidth; others met noise)."""
    import onnxruntime as ort
    from onnxruntime import OrtValue

    n = megabytes * 2**20 // 4
    graph = _reduce_sum_model()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    data = OrtValue.ortvalue_from_numpy(np.ones((threads * 64, n // (threads * 64)), np.float32))
    binding = session.io_binding()
    binding.bind_ortvalue_input("x", data)
    binding.bind_output("y")
    session.run_with_iobinding(binding)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        times.append(time.perf_counter() - start)
    return n * 4 / min(times)


@functools.lru_cache(maxsize=None)
def _bandwidth(threads: int) -> float:
    """A property of the machine: measured once per process, not again for each engine a pipeline benches."""
    return measure_read_bandwidth(threads)


def _reduce_sum_model() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [node], "bandwidth", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["r", "c"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["r"])], [axes],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob(f"{GRAPH}*"))


def kv_bytes_per_token(config: dict, context: float, dtype_size: int) -> float:
    """Cache bytes one decode step reads: K and V of every layer over the filled context."""
    heads = config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * heads * head_dim * context * dtype_size


def check_bench_values(prompt_len, new_tokens, batch, repeats) -> None:
    """The settings on their own (no engine needed, so the CLI checks them before opening one)."""
    validate.integer("prompt_len", prompt_len, 1)
    validate.integer("new_tokens", new_tokens, 2)  # decode speed needs at least one step after the first token
    validate.integer("batch", batch, 1)
    validate.integer("repeats", repeats, 1)


def check_bench_request(engine: Engine, prompt_len, new_tokens, batch, repeats) -> None:
    """Refuse a measurement that would not measure what it reports, before any work."""
    check_bench_values(prompt_len, new_tokens, batch, repeats)
    if batch > engine.backend.max_batch:
        # Engine.generate would run the rows in groups one after another: reporting that as one batch would
        # multiply the measured speed by the batch size.
        raise LlamaportError(
            f"batch {batch} exceeds this engine's max_batch {engine.backend.max_batch}, so its rows cannot run as "
            f"one batch; bench with --batch {engine.backend.max_batch} or less, or re-export with --max-batch {batch}"
        )
    if prompt_len + new_tokens > engine.max_seq:
        raise LlamaportError(
            f"prompt length {prompt_len} + {new_tokens} new tokens exceed the engine's max_seq {engine.max_seq}; "
            "lower --prompt-len or --new-tokens"
        )


def run_bench(engine: Engine, folder: Path, prompt_len: int = 128, new_tokens: int = 128, batch: int = 1,
              repeats: int = 3, threads: int | None = None) -> dict:
    check_bench_request(engine, prompt_len, new_tokens, batch, repeats)
    rng = np.random.default_rng(0)
    vocab = engine.config["vocab_size"]
    low = min(100, vocab // 2)  # skip the first ids, where special tokens usually sit (tiny test vocabularies too)
    prompts = [rng.integers(low, vocab - 1, prompt_len).tolist() for _ in range(batch)]
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    engine.generate(prompts[:1] if batch == 1 else prompts, SamplingParams(max_new_tokens=4, ignore_eos=True))  # warm
    runs = []
    for _ in range(repeats):
        result = engine.generate(prompts, params)
        runs.append((result[0] if isinstance(result, list) else result).timings)
    ttft = statistics.median(r["time_to_first_token_s"] for r in runs)
    decode_steps_per_s = statistics.median(r["decode_steps_per_s"] for r in runs)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the bandwidth probe's buffer
    from .backends.onnxruntime_backend import physical_cores

    threads = threads or physical_cores()
    on_cuda = getattr(getattr(engine.backend, "device", None), "type", None) == "cuda"
    if on_cuda:  # the eager backend on a GPU: its own weights against the GPU's measured copy bandwidth
        bandwidth, weights, dtype_size = cuda_copy_bandwidth(), engine.backend.weight_bytes(), engine.backend.dtype_size
    else:
        bandwidth = _bandwidth(threads)
        dtype_size = 2 if (engine.manifest or {}).get("dtype") in (DType.FP16, DType.BF16) else 4
        weights = weight_bytes(folder)
    per_step = weights + kv_bytes_per_token(engine.config, prompt_len + new_tokens / 2, dtype_size) * batch
    achieved = per_step * decode_steps_per_s
    return {
        "engine": str(folder),
        "dtype": (engine.manifest or {}).get("dtype"),
        "target": (engine.manifest or {}).get("target"),
        "max_seq": engine.max_seq,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "threads": threads,
        "time_to_first_token_s": ttft,
        "prefill_tokens_per_s": batch * prompt_len / ttft,
        "decode_tokens_per_s": decode_steps_per_s * batch,
        "peak_rss_mb": peak_rss_mb,
        "bytes_per_decode_step": per_step,
        "measured_read_bandwidth_gb_s": bandwidth / 1e9,
        "roofline_decode_tokens_per_s": bandwidth / per_step * batch,
        "roofline_percent": 100 * achieved / bandwidth,
    } | ({"device": "cuda", "bandwidth_probe": "device-to-device copy, bytes read + written"} if on_cuda else {})


def cuda_copy_bandwidth(megabytes: int = 2048, repeats: int = 20) -> float:
    """Bytes/s read + written by a device-to-device copy on the current GPU (median of `repeats`, timed with
    CUDA events after a warm-up): the attainable HBM bandwidth a memory-bound decode step is measured against."""
    import torch

    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() / statistics.median(times)
