"""Triton kernels (plugins/triton_attention.py, plugins/triton_rotary.py) against their references.

On the CPU they run in Triton's interpreter (TRITON_INTERPRET=1, set here before triton is imported), so shapes
stay tiny. On a CUDA machine run the `gpu` tests compiled: `TRITON_INTERPRET=0 python -m pytest -m gpu <this file>`.

Tolerances, against the reference evaluated in float32 on the same (fp16-rounded) inputs:
- fp32: 1e-5 abs + rel (the interpreter's dots are exact fp32; only summation order differs);
- fp16: 4e-3 abs + rel on outputs of size ~1 (the kernel rounds rotated q/k and the output to fp16 once, half an
  ulp is ~5e-4 at 1.0; P is rounded to fp16 before P@V as in every flash-attention kernel);
- bf16 (GPU only): 3e-2 (8 mantissa bits).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[dev]' brings it)")

from llamaport.models.attention import gqa_attention as gqa_reference  # noqa: E402
from llamaport.plugins.kernels import Kernels  # noqa: E402
from llamaport.plugins.triton_attention import gqa_attention_triton  # noqa: E402
from llamaport.plugins.triton_rotary import RotaryLayout, rotary_reference, rotary_triton  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
cpu_only = pytest.mark.skipif(not INTERPRETED, reason="CPU kernel tests need TRITON_INTERPRET=1")
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def rope_tables(positions: torch.Tensor, dim: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (B, S, dim/2) for positions (B, S), default rope with base 10000."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(positions.device)
    return freqs.cos().to(dtype), freqs.sin().to(dtype)


def attention_inputs(batch, seq_len, heads, kv_heads, dim, max_seq, past, dtype, device="cpu", seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q = randn(batch, seq_len, heads * dim)  # (B, S, H*D)
    k, v = randn(batch, seq_len, kv_heads * dim), randn(batch, seq_len, kv_heads * dim)  # (B, S, H_kv*D)
    past_lengths = torch.tensor(past, dtype=torch.int64, device=device)  # (B,)
    positions = past_lengths[:, None] + torch.arange(seq_len, device=device)  # (B, S)
    cos, sin = rope_tables(positions, dim, dtype)
    # Random, not zero, cache contents: a kernel that reads a slot it should not would show.
    k_cache, v_cache = randn(batch, kv_heads, max_seq, dim), randn(batch, kv_heads, max_seq, dim)
    return q, k, v, cos, sin, k_cache, v_cache, past_lengths


def check_attention(inputs, dtype, poison_unfilled: bool = False, **kernel_args):
    q, k, v, cos, sin, k_cache, v_cache, past = inputs
    upcast = (t.float() for t in (q, k, v, cos, sin, k_cache, v_cache))
    ref_out, ref_k, ref_v = gqa_reference(*upcast, past, inplace=False)
    k_in, v_in = k_cache.clone(), v_cache.clone()
    if poison_unfilled:  # NaN past each row's filled length: any read of it would turn the output NaN
        filled = (past + q.shape[1])[:, None, None, None]
        beyond = torch.arange(k_in.shape[2], device=q.device)[None, None, :, None] >= filled
        k_in.masked_fill_(beyond, float("nan"))
        v_in.masked_fill_(beyond, float("nan"))
    out, k_out, v_out = gqa_attention_triton(q, k, v, cos, sin, k_in, v_in, past, **kernel_args)
    assert k_out.data_ptr() == k_in.data_ptr() and v_out.data_ptr() == v_in.data_ptr(), "caches updated in place"
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref_out, atol=tol, rtol=tol)
    if poison_unfilled:
        filled_slots = ~beyond.expand_as(k_out)
        k_out, v_out, ref_k, ref_v = k_out[filled_slots], v_out[filled_slots], ref_k[filled_slots], ref_v[filled_slots]
    torch.testing.assert_close(k_out.float(), ref_k, atol=tol, rtol=tol)
    torch.testing.assert_close(v_out.float(), ref_v, atol=0, rtol=0)  # v is copied, never computed


# (batch, new tokens S, heads, kv heads, head_dim, S_max, past_lengths per row): GQA ratios 1, 2, 3, 4, 8; head_dim
# 64 and 128; empty, partly filled and ragged caches; S = 1 is the split-K decode kernel, S > 1 the prefill kernel.
ATTENTION_CASES = {
    "decode_mha_d64_ragged": (2, 1, 2, 2, 64, 48, [5, 30]),
    "decode_gqa2_d128_ragged": (2, 1, 4, 2, 128, 80, [0, 70]),
    "decode_gqa3_d64": (1, 1, 6, 2, 64, 40, [17]),
    "decode_gqa8_d128_ragged": (3, 1, 8, 1, 128, 72, [63, 1, 40]),
    "prefill_empty_gqa2_d64": (2, 12, 4, 2, 64, 40, [0, 0]),
    "prefill_ragged_past_gqa4_d64": (2, 9, 4, 1, 64, 48, [0, 21]),
    "prefill_partly_filled_mha_d128": (1, 18, 2, 2, 128, 40, [7]),
}


@cpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", list(ATTENTION_CASES), ids=list(ATTENTION_CASES))
def test_attention_kernel_matches_reference(case, dtype):
    inputs = attention_inputs(*ATTENTION_CASES[case], dtype)
    # Several splits even at these lengths, so the split-K merge is exercised; prefill takes 16-query blocks.
    check_attention(inputs, dtype, num_splits=3, block_n=16)


@cpu_only
def test_decode_reads_only_each_rows_filled_length():
    inputs = attention_inputs(2, 1, 4, 2, 64, 64, [9, 40], torch.float32)
    check_attention(inputs, torch.float32, poison_unfilled=True, num_splits=4, block_n=16)


@cpu_only
def test_prefill_reads_only_each_rows_filled_length():
    inputs = attention_inputs(2, 6, 4, 2, 64, 48, [3, 25], torch.float32)
    check_attention(inputs, torch.float32, poison_unfilled=True, block_n=16)


# (batch, S, heads, head_dim, rotary dim) x layout: full and partial rotary dims.
ROTARY_CASES = {"full_d64": (2, 3, 2, 64, 64), "full_d128": (1, 2, 2, 128, 128), "partial_d64_r32": (2, 3, 2, 64, 32),
                "partial_d128_r64": (1, 2, 3, 128, 64)}


@cpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("layout", list(RotaryLayout), ids=[layout.value for layout in RotaryLayout])
@pytest.mark.parametrize("case", list(ROTARY_CASES), ids=list(ROTARY_CASES))
def test_rotary_kernel_matches_reference(case, layout, dtype):
    batch, seq_len, heads, dim, rot = ROTARY_CASES[case]
    x = torch.randn(batch, seq_len, heads * dim).to(dtype)
    cos, sin = rope_tables(torch.randint(0, 4000, (batch, seq_len)), rot, dtype)
    out = rotary_triton(x, cos, sin, heads, layout)
    ref = rotary_reference(x.float(), cos.float(), sin.float(), heads, layout)
    torch.testing.assert_close(out.float(), ref, atol=TOL[dtype], rtol=TOL[dtype])


@cpu_only
def test_rotary_reference_full_rotate_half_is_the_models_op():
    from llamaport.plugins.ops import rotary_embedding

    x, cos, sin = torch.randn(2, 3, 2 * 64), torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    torch.testing.assert_close(rotary_reference(x, cos, sin, 2), rotary_embedding(x, cos, sin, 2), atol=0, rtol=0)


@cpu_only
def test_triton_kernels_generate_the_reference_greedy_tokens(tmp_path):
    """A tiny GQA model with linear rope scaling: ragged batch of two prompts, prefill + decode, same tokens."""
    from llamaport.runtime import Engine, SamplingParams

    from tiny import save_hf_model

    save_hf_model(tmp_path, "rope_linear")
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    prompts = [[5, 17, 33, 9, 60, 3], [8, 41]]
    reference = Engine.open(tmp_path, backend="eager", max_seq=32)
    triton_engine = Engine.open(tmp_path, backend="eager", max_seq=32, kernels=Kernels.TRITON.value)
    expected = [r.token_ids for r in reference.generate(prompts, params)]
    assert [r.token_ids for r in triton_engine.generate(prompts, params)] == expected
    logits = triton_engine.logits(prompts[0])
    np.testing.assert_allclose(logits, reference.logits(prompts[0]), atol=1e-4, rtol=1e-4)


def test_unknown_kernels_name_is_one_clear_error():
    from llamaport.errors import LlamaportError

    with pytest.raises(LlamaportError, match="--kernels 'cuda' is not one of reference, triton"):
        Kernels.parse("cuda")
    assert Kernels.parse("triton") is Kernels.TRITON and Kernels.TRITON == "triton"


# ---------------------------------------------------------------------------------------------- GPU

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(),
                                reason="needs a CUDA GPU and compiled Triton (TRITON_INTERPRET=0)")

# Llama-2-7B: 32 heads / 32 kv heads; Llama-3-8B: 32 / 8; both head_dim 128.
GPU_SHAPES = {"llama2_7b": (32, 32, 128), "llama3_8b": (32, 8, 128)}


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", list(GPU_SHAPES), ids=list(GPU_SHAPES))
@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_attention_kernel_matches_reference_at_llama_shapes(shape, mode, dtype):
    heads, kv_heads, dim = GPU_SHAPES[shape]
    seq_len, past = (300, [0, 500, 37, 1200]) if mode == "prefill" else (1, [4095, 1, 2048, 777])
    inputs = attention_inputs(4, seq_len, heads, kv_heads, dim, 4096, past, dtype, device="cuda")
    check_attention(inputs, dtype, poison_unfilled=True)


@gpu
@needs_cuda
def test_cuda_graph_decode_matches_reference_backend_tokens(tmp_path):
    from llamaport.runtime import Engine, SamplingParams

    from tiny import save_hf_model

    save_hf_model(tmp_path, "rope_linear", hidden_size=256, num_attention_heads=4, num_key_value_heads=2)
    params = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    prompts = [[5, 17, 33, 9, 60, 3], [8, 41]]
    reference = Engine.open(tmp_path, backend="eager", max_seq=64)
    fast = Engine.open(tmp_path, backend="eager", max_seq=64, device="cuda", kernels="triton")
    expected = [r.token_ids for r in reference.generate(prompts, params)]
    # fp16 on the GPU vs fp32 reference: near-ties could flip a token, so the share that agrees must be high.
    got = [r.token_ids for r in fast.generate(prompts, params)]
    agree = np.mean([a == b for row, ref in zip(got, expected) for a, b in zip(row, ref)])
    assert agree >= 0.9, (got, expected)
    assert fast.generate(prompts, params) and [r.token_ids for r in fast.generate(prompts, params)] == got
