"""`llamaport bench`: prefill and decode speed, time to first token, peak memory, and decode as a share of the
machine's measured read bandwidth (the roofline for memory-bound decoding)."""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import numpy as np

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
    return sum(p.stat().st_size for p in folder.glob("model.onnx*"))


def kv_bytes_per_token(config: dict, context: float, dtype_size: int) -> float:
    """Cache bytes one decode step reads: K and V of every layer over the filled context."""
    heads = config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * heads * head_dim * context * dtype_size


def run_bench(engine: Engine, folder: Path, prompt_len: int = 128, new_tokens: int = 128, batch: int = 1,
              repeats: int = 3, threads: int | None = None) -> dict:
    rng = np.random.default_rng(0)
    vocab = engine.config["vocab_size"]
    prompts = [rng.integers(100, vocab - 1, prompt_len).tolist() for _ in range(batch)]
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
    bandwidth = measure_read_bandwidth(threads)
    dtype_size = 2 if (engine.manifest or {}).get("dtype") in ("fp16", "bf16") else 4
    per_step = weight_bytes(folder) + kv_bytes_per_token(engine.config, prompt_len + new_tokens / 2, dtype_size) * batch
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
    }
