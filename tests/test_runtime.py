"""The runtime: generation matches the eager model, rows finish independently, the cache is updated in place,
the ONNX Runtime path runs without torch, and `check` tells a good engine from a damaged one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from tiny import save_hf_model

from llamaport.cli import main
from llamaport.exporter import ExportOptions, export_engine
from llamaport.errors import LlamaportError
from llamaport.runtime import Engine, SamplingParams

GREEDY = SamplingParams(max_new_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_runtime")
    save_hf_model(root / "hf", "gqa")
    engines = {}
    for target in ("onnx", "ort"):
        export_engine(root / "hf", root / target, ExportOptions(target=target, max_seq=32, max_batch=4))
        engines[target] = root / target
    return root / "hf", engines


@pytest.mark.parametrize("target", ["onnx", "ort"])
def test_greedy_generation_matches_the_eager_backend_row_by_row(tiny, target):
    hf, engines = tiny
    engine, eager = Engine.open(engines[target]), Engine.open(hf, backend="eager", max_seq=32)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    batched = engine.generate(prompts, GREEDY)
    for prompt, result in zip(prompts, batched):
        alone = eager.generate(prompt, GREEDY)
        assert result.token_ids == alone.token_ids and result.finish_reason == "length"


def test_rows_finish_independently_on_their_stop_token(tiny):
    hf, engines = tiny
    engine = Engine.open(engines["ort"])
    free = engine.generate([[5, 6, 7], [20, 21]], GREEDY)
    stop = free[0].token_ids[3]  # row 0 stops at its 4th token; row 1 runs on unless it also produces it
    results = engine.generate([[5, 6, 7], [20, 21]], SamplingParams(max_new_tokens=12, ignore_eos=True,
                                                                      stop_token_ids=[stop]))
    assert results[0].token_ids == free[0].token_ids[:3] and results[0].finish_reason == "stop"
    cut = free[1].token_ids.index(stop) if stop in free[1].token_ids else 12
    assert results[1].token_ids == free[1].token_ids[:cut]


def test_cache_filling_up_ends_with_length_and_long_prompts_are_refused_or_truncated(tiny):
    _, engines = tiny
    engine = Engine.open(engines["onnx"])
    result = engine.generate(list(range(3, 30)), SamplingParams(max_new_tokens=50, ignore_eos=True))
    assert result.finish_reason == "length" and len(result.token_ids) == 32 - 27 + 1
    with pytest.raises(LlamaportError, match="exceeds the engine's max_seq 32"):
        engine.generate(list(range(3, 43)), GREEDY)
    # issue 13: truncation leaves room for the tokens asked for (32 - 12), keeping the prompt's end
    truncated = engine.generate(list(range(3, 43)), GREEDY, truncate=True)
    assert truncated.prompt_token_ids == list(range(23, 43)) and len(truncated.token_ids) == 12


def test_cache_is_updated_in_place_in_the_bound_buffers(tiny):
    _, engines = tiny
    for target in ("onnx", "ort"):
        engine = Engine.open(engines[target])
        engine.generate([5, 6, 7], SamplingParams(max_new_tokens=3, ignore_eos=True))
        cache = engine.backend.caches["past.0.key"].numpy()  # the very buffer bound as input and output
        assert np.abs(cache[0, :, :5]).sum() > 0 and not cache[0, :, 6:].any()


def test_sampling_is_reproducible_with_a_seed_and_top_k_1_is_greedy(tiny):
    _, engines = tiny
    engine = Engine.open(engines["ort"])
    sampled = [engine.generate([5, 6], SamplingParams(max_new_tokens=8, temperature=1.5, top_p=0.9, seed=7,
                                                      ignore_eos=True)).token_ids for _ in range(2)]
    assert sampled[0] == sampled[1]
    top1 = engine.generate([5, 6], SamplingParams(max_new_tokens=8, temperature=1.0, top_k=1, seed=3, ignore_eos=True))
    assert top1.token_ids == engine.generate([5, 6], SamplingParams(max_new_tokens=8, ignore_eos=True)).token_ids


def test_repetition_penalty_covers_the_prompt_and_every_generated_token(tiny):
    _, engines = tiny
    engine = Engine.open(engines["ort"])
    got = engine.generate([5, 6], SamplingParams(max_new_tokens=8, repetition_penalty=1.5, ignore_eos=True)).token_ids
    ids = [5, 6]  # the same, step by step: penalize everything seen so far, then take the best
    for _ in range(8):
        logits = engine.logits(ids)[-1].astype(np.float64)
        seen = sorted(set(ids))
        logits[seen] = np.where(logits[seen] > 0, logits[seen] / 1.5, logits[seen] * 1.5)
        ids.append(int(logits.argmax()))
    assert got == ids[2:]


def test_logits_match_the_eager_model_per_position(tiny):
    hf, engines = tiny
    ids = [5, 9, 2, 44, 17, 8]
    got = Engine.open(engines["onnx"]).logits(ids)
    expected = Engine.open(hf, backend="eager", max_seq=32).logits(ids)
    assert got.shape == (6, 96) and np.abs(got - expected).max() <= 1e-4


def test_onnxruntime_path_runs_with_torch_unimportable(tiny):
    _, engines = tiny
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from llamaport.runtime import Engine, SamplingParams
        out = Engine.open({str(engines['ort'])!r}).generate([5, 6, 7], SamplingParams(max_new_tokens=4, ignore_eos=True))
        assert len(out.token_ids) == 4 and "onnx" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_fp32_ort_engine_on_cuda_is_refused_with_the_fix(tiny, monkeypatch):
    import onnxruntime

    _, engines = tiny
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(LlamaportError, match="--dtype fp16"):
        Engine.open(engines["ort"], device="cuda")


@pytest.mark.slow
def test_smollm2_greedy_generation_reproduces_the_eager_tokens(smollm_engine, smollm_eager):
    engine = Engine.open(smollm_engine("onnx"))
    params = SamplingParams(max_new_tokens=32, ignore_eos=True)
    prompts = ["Plants create energy through", "The history of Rome", "def quicksort(arr):"]
    for prompt, result in zip(prompts, engine.generate(prompts, params)):
        assert result.token_ids == smollm_eager.generate(prompt, params).token_ids, prompt


@pytest.mark.slow
def test_smollm2_chat_answers_paris(smollm_engine):
    engine = Engine.open(smollm_engine("ort"))
    out = engine.chat([{"role": "user", "content": "What is the capital of France?"}], SamplingParams(max_new_tokens=24))
    assert "Paris" in out.text and out.finish_reason == "stop"
    pieces = list(engine.stream("What is the capital of France?", SamplingParams(max_new_tokens=24), chat=True))
    assert "".join(pieces) == out.text


@pytest.mark.slow
def test_smollm2_generate_cli_prints_json(smollm_engine):
    result = CliRunner().invoke(main, ["generate", str(smollm_engine("onnx")), "-p", "The sky is", "--max-new-tokens", "5",
                                       "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert len(out["token_ids"]) == 5 and out["finish_reason"] == "length" and "decode_steps_per_s" in out["timings"]


def test_check_metrics_measure_known_differences():
    from llamaport.runtime.check import compare_logits

    expected = np.random.default_rng(0).standard_normal((3, 50)).astype(np.float32)
    got = expected.copy()
    got[1, 7] += 0.25  # one logit off
    got[2] = expected[2, ::-1]  # a different distribution at one position
    m = compare_logits(expected, got)
    assert m["max_abs_diff"] == pytest.approx(np.abs(expected - got).max())
    assert m["mean_abs_diff"] == pytest.approx(np.abs(expected - got).mean(), rel=1e-5)
    assert m["median_abs_diff"] == 0.0
    assert m["top1"] == pytest.approx(2 / 3) and m["cosine"] < 0.5 and m["kl"] > 0.1
    same = compare_logits(expected, expected)
    assert same["max_abs_diff"] == 0.0 and same["kl"] == pytest.approx(0.0, abs=1e-12) and same["top5"] == 1.0


@pytest.mark.slow
def test_check_passes_on_a_good_engine_and_fails_on_a_damaged_one(smollm_engine, smollm_gguf, tmp_path):
    import shutil

    good = smollm_engine("onnx")
    result = CliRunner().invoke(main, ["check", str(good), "--greedy-tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["passed"]

    damaged = tmp_path / "damaged"
    shutil.copytree(good, damaged)
    data = np.memmap(damaged / "model.onnx.data", dtype=np.float32, mode="r+")
    data[len(data) // 2 : len(data) // 2 + 4096] += 0.5  # perturb part of one weight matrix
    data.flush()
    del data
    result = CliRunner().invoke(main, ["check", str(damaged), "--reference", str(smollm_gguf), "--greedy-tokens", "8"])
    assert result.exit_code == 1 and "FAIL" in result.output


@pytest.mark.slow
def test_chat_cli_answers_and_exits_cleanly_at_end_of_input(smollm_engine):
    result = CliRunner().invoke(main, ["chat", str(smollm_engine("ort")), "--max-new-tokens", "24"],
                                input="What is the capital of France?\n")
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output


@pytest.mark.slow
def test_leaving_a_stream_early_stops_generation_and_the_engine_stays_usable(smollm_engine):
    engine = Engine.open(smollm_engine("onnx"))
    stream = engine.stream("Once upon a time", SamplingParams(max_new_tokens=200, ignore_eos=True))
    first = [next(stream), next(stream)]
    stream.close()  # what a `break` out of the for loop does
    assert all(first)
    assert len(engine.generate("Once upon a time", SamplingParams(max_new_tokens=3, ignore_eos=True)).token_ids) == 3
