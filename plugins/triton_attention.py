"""GQA attention with fused RoPE and in-place static-cache write, as Triton kernels.

Semantics: `llamaport.models.attention.gqa_attention` (the op `llamaport::gqa_attention`): q/k/v (B, S, H*D)
un-rotated, cos/sin (B, S, D/2), caches (B, H_kv, S_max, D) updated in place at each row's past_lengths[b]
onwards, causal attention from each row's own position. 

Prefill (S > 1), two launches:
1. `_rope_cache_kernel`: q rotated into a scratch (B, S, H, D); k rotated and v copied straight into the caches
   (no rotated-k tensor in between). It must finish before attention reads the cache, hence its own launch.
2. `_prefill_kernel`: flash-attention tiling (BLOCK_M queries x BLOCK_N keys, online softmax), one program per
   (query block, batch, query head); each row reads keys 0..its own position only.

Decode (S = 1), two launches, RoPE and the cache write fused in:
1. `_decode_split_kernel`, split-K flash-decoding: one program per (batch, kv head, split) rotates the q of all G
   query heads of its kv head in registers and attends over one chunk of the row's *cached* tokens (K/V read once
   per group). The row's filled length is read from past_lengths on the device, never S_max, and split across a
   fixed number of programs so one sequence still fills the GPU.
2. `_decode_merge_kernel`: per (batch, query head), merges the splits' partial softmax sums with the new token's
   own term (its k rotated in registers); one program per kv head writes the new k/v into the cache. The split
   kernel never reads that slot, so the write needs no ordering against it.

Nothing depends on a host-side length, so a decode step is capturable in a CUDA graph: the grid depends only on
(B, H_kv, S_max). Scores, softmax and the P@V accumulator are float32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_rotary import rotary_meta, rotate_row


@triton.jit
def _rope_cache_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, qrot_ptr, kc_ptr, vc_ptr, past_ptr, seq_len,
                       stride_qb, stride_qs, stride_kb, stride_ks, stride_vb, stride_vs, stride_cb, stride_cs,
                       stride_kcb, stride_kch, stride_kcs, stride_vcb, stride_vch, stride_vcs,
                       NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                       ROT_HALF: tl.constexpr, HALF_PAD: tl.constexpr, TAIL_PAD: tl.constexpr):
    token, head = tl.program_id(0), tl.program_id(1)  # grid (B*S, H + 2*H_kv): q heads, then k heads, then v heads
    b, s = token // seq_len, token % seq_len
    pos = tl.load(past_ptr + b).to(tl.int64) + s  # this token's slot in the row's cache
    table = b * stride_cb + s * stride_cs
    if head < NUM_HEADS:
        src = q_ptr + b * stride_qb + s * stride_qs + head * HEAD_DIM
        dst = qrot_ptr + (token * NUM_HEADS + head) * HEAD_DIM
        rotate_row(src, dst, cos_ptr + table, sin_ptr + table, HEAD_DIM, ROT_HALF, HALF_PAD, False, TAIL_PAD)
    elif head < NUM_HEADS + NUM_KV_HEADS:
        kv = head - NUM_HEADS
        src = k_ptr + b * stride_kb + s * stride_ks + kv * HEAD_DIM
        dst = kc_ptr + b * stride_kcb + kv * stride_kch + pos * stride_kcs
        rotate_row(src, dst, cos_ptr + table, sin_ptr + table, HEAD_DIM, ROT_HALF, HALF_PAD, False, TAIL_PAD)
    else:
        kv = head - NUM_HEADS - NUM_KV_HEADS
        d = tl.arange(0, HEAD_DIM)
        row = tl.load(v_ptr + b * stride_vb + s * stride_vs + kv * HEAD_DIM + d)
        tl.store(vc_ptr + b * stride_vcb + kv * stride_vch + pos * stride_vcs + d, row.to(vc_ptr.dtype.element_ty))


@triton.jit
def _prefill_kernel(qrot_ptr, kc_ptr, vc_ptr, past_ptr, out_ptr, seq_len, scale,
                    stride_kcb, stride_kch, stride_kcs, stride_vcb, stride_vch, stride_vcs, stride_ob, stride_os,
                    NUM_HEADS: tl.constexpr, GROUPS: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    block_m, bh = tl.program_id(0), tl.program_id(1)  # grid (cdiv(S, BLOCK_M), B*H)
    b, head = bh // NUM_HEADS, bh % NUM_HEADS
    kv = head // GROUPS
    past = tl.load(past_ptr + b).to(tl.int64)
    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query index among the S new tokens
    d = tl.arange(0, HEAD_DIM)
    q_live = rows < seq_len
    q = tl.load(qrot_ptr + ((b * seq_len + rows[:, None]) * NUM_HEADS + head) * HEAD_DIM + d[None, :],
                mask=q_live[:, None], other=0.0)  # (BLOCK_M, D)
    q_pos = past + rows  # (BLOCK_M,) absolute positions: key j is visible to row i iff j <= q_pos[i]
    k_base = kc_ptr + b * stride_kcb + kv * stride_kch
    v_base = vc_ptr + b * stride_vcb + kv * stride_vch
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    end = past + tl.minimum((block_m + 1) * BLOCK_M, seq_len)  # keys past the block's last position are never seen
    for start in range(0, end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        k_live = cols < end
        k = tl.load(k_base + cols[:, None] * stride_kcs + d[None, :], mask=k_live[:, None], other=0.0)  # (N, D)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (BLOCK_M, BLOCK_N) fp32
        visible = (cols[None, :] <= q_pos[:, None]) & k_live[None, :]
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * stride_vcs + d[None, :], mask=k_live[:, None], other=0.0)  # (N, D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + b * stride_ob + rows[:, None] * stride_os + head * HEAD_DIM + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=q_live[:, None])


@triton.jit
def _decode_split_kernel(q_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, past_ptr, acc_ptr, stats_ptr, scale, stride_qb,
                         stride_cb, stride_kcb, stride_kch, stride_kcs, stride_vcb, stride_vch, stride_vcs,
                         NUM_KV_HEADS: tl.constexpr, GROUPS: tl.constexpr, GROUP_PAD: tl.constexpr,
                         HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr,
                         PRECISION: tl.constexpr):
    bkv, split = tl.program_id(0), tl.program_id(1)  # grid (B*H_kv, NUM_SPLITS)
    b, kv = bkv // NUM_KV_HEADS, bkv % NUM_KV_HEADS
    # The cached tokens only: the new token's k/v are merged (and written) by the merge kernel, so no program of
    # this launch reads a slot that the same step writes.
    past = tl.load(past_ptr + b).to(tl.int64)
    # Each split takes a BLOCK_N-aligned chunk of the filled length; splits past the end write an empty partial.
    chunk = tl.cdiv(tl.cdiv(past, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, past)
    HALF: tl.constexpr = HEAD_DIM // 2
    g = tl.arange(0, GROUP_PAD)  # the kv head's query heads, padded to a tl.dot-able height
    g_live = g < GROUPS
    head = kv * GROUPS + g  # (GROUP_PAD,)
    h = tl.arange(0, HALF)
    # RoPE on q in registers, kept as its two halves: scores = q_a . k[:D/2] + q_b . k[D/2:].
    q_row = q_ptr + b * stride_qb + head[:, None] * HEAD_DIM + h[None, :]
    q1 = tl.load(q_row, mask=g_live[:, None], other=0.0).to(tl.float32)  # (GROUP_PAD, D/2)
    q2 = tl.load(q_row + HALF, mask=g_live[:, None], other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + b * stride_cb + h).to(tl.float32)[None, :]
    sn = tl.load(sin_ptr + b * stride_cb + h).to(tl.float32)[None, :]
    elt = q_ptr.dtype.element_ty  # rotated q rounded to the activation dtype, as the reference rotates in it
    qa, qb = (q1 * c - q2 * sn).to(elt), (q2 * c + q1 * sn).to(elt)
    d = tl.arange(0, HEAD_DIM)
    k_base = kc_ptr + b * stride_kcb + kv * stride_kch
    v_base = vc_ptr + b * stride_vcb + kv * stride_vch
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        live = cols < hi
        k_rows = k_base + cols[:, None] * stride_kcs + h[None, :]
        k1 = tl.load(k_rows, mask=live[:, None], other=0.0)  # (N, D/2)
        k2 = tl.load(k_rows + HALF, mask=live[:, None], other=0.0)  # (N, D/2)
        v = tl.load(v_base + cols[:, None] * stride_vcs + d[None, :], mask=live[:, None], other=0.0)  # (N, D)
        scores = tl.dot(qa, tl.trans(k1), input_precision=PRECISION)
        scores = (tl.dot(qb, tl.trans(k2), scores, input_precision=PRECISION)) * scale  # (GROUP_PAD, N)
        scores = tl.where(live[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    # Partials, unnormalized: acc (B, H, NUM_SPLITS, D), stats (B, H, NUM_SPLITS, 2) = (running max, sum).
    slot = (b * NUM_KV_HEADS * GROUPS + head) * NUM_SPLITS + split  # (GROUP_PAD,)
    tl.store(acc_ptr + slot[:, None] * HEAD_DIM + d[None, :], acc, mask=g_live[:, None])
    tl.store(stats_ptr + slot * 2, m_i, mask=g_live)
    tl.store(stats_ptr + slot * 2 + 1, l_i, mask=g_live)


@triton.jit
def _decode_merge_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, past_ptr, acc_ptr, stats_ptr, out_ptr,
                         scale, stride_qb, stride_kb, stride_vb, stride_cb, stride_kcb, stride_kch, stride_kcs,
                         stride_vcb, stride_vch, stride_vcs, NUM_HEADS: tl.constexpr, GROUPS: tl.constexpr,
                         HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, SPLIT_PAD: tl.constexpr):
    bh = tl.program_id(0)  # grid (B*H,); out (B, 1, H*D) contiguous, so row bh starts at bh * D
    b, head = bh // NUM_HEADS, bh % NUM_HEADS
    kv = head // GROUPS
    pos = tl.load(past_ptr + b).to(tl.int64)  # the new token's slot
    HALF: tl.constexpr = HEAD_DIM // 2
    h = tl.arange(0, HALF)
    c = tl.load(cos_ptr + b * stride_cb + h).to(tl.float32)
    sn = tl.load(sin_ptr + b * stride_cb + h).to(tl.float32)
    q1 = tl.load(q_ptr + b * stride_qb + head * HEAD_DIM + h).to(tl.float32)
    q2 = tl.load(q_ptr + b * stride_qb + head * HEAD_DIM + HALF + h).to(tl.float32)
    k1 = tl.load(k_ptr + b * stride_kb + kv * HEAD_DIM + h).to(tl.float32)
    k2 = tl.load(k_ptr + b * stride_kb + kv * HEAD_DIM + HALF + h).to(tl.float32)
    elt = kc_ptr.dtype.element_ty
    qa, qb = (q1 * c - q2 * sn).to(elt), (q2 * c + q1 * sn).to(elt)
    ka, kb = (k1 * c - k2 * sn).to(elt), (k2 * c + k1 * sn).to(elt)  # exactly what goes into the cache
    d = tl.arange(0, HEAD_DIM)
    v_new = tl.load(v_ptr + b * stride_vb + kv * HEAD_DIM + d)
    if head % GROUPS == 0:  # one program per kv head writes the new token into the cache
        k_slot = kc_ptr + b * stride_kcb + kv * stride_kch + pos * stride_kcs
        tl.store(k_slot + h, ka)
        tl.store(k_slot + HALF + h, kb)
        tl.store(vc_ptr + b * stride_vcb + kv * stride_vch + pos * stride_vcs + d, v_new.to(vc_ptr.dtype.element_ty))
    s_new = tl.sum(qa.to(tl.float32) * ka.to(tl.float32), 0) + tl.sum(qb.to(tl.float32) * kb.to(tl.float32), 0)
    s_new = s_new * scale  # the new token's own score
    sp = tl.arange(0, SPLIT_PAD)
    live = sp < NUM_SPLITS
    m = tl.load(stats_ptr + (bh * NUM_SPLITS + sp) * 2, mask=live, other=float("-inf"))  # (SPLIT_PAD,)
    l = tl.load(stats_ptr + (bh * NUM_SPLITS + sp) * 2 + 1, mask=live, other=0.0)
    m_all = tl.maximum(tl.max(m, 0), s_new)
    weight = tl.where(m > float("-inf"), tl.exp(m - m_all), 0.0)  # empty splits weigh nothing
    w_new = tl.exp(s_new - m_all)
    acc = tl.load(acc_ptr + (bh * NUM_SPLITS + sp[:, None]) * HEAD_DIM + d[None, :], mask=live[:, None], other=0.0)
    total = tl.sum(acc * weight[:, None], 0) + w_new * v_new.to(tl.float32)  # (D,)
    out = total / (tl.sum(l * weight, 0) + w_new)
    tl.store(out_ptr + bh * HEAD_DIM + d, out.to(out_ptr.dtype.element_ty))


# ---------------------------------------------------------------------------------------------- launchers

def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def decode_splits(batch: int, num_kv_heads: int, max_seq: int, device: torch.device, block_n: int = 64,
                  programs_per_sm: int = 4) -> int:
    """Splits per (row, kv head): about `programs_per_sm` programs per multiprocessor, none shorter than 4 tiles.

    Depends on the cache's shape only (never on the filled lengths), so a captured decode graph stays valid.
    """
    wanted = triton.cdiv(programs_per_sm * _sm_count(device), batch * num_kv_heads)
    return max(1, min(wanted, triton.cdiv(max_seq, 4 * block_n), 128))


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs (the CPU tests) keep full fp32 products; fp16/bf16 dots accumulate in fp32 either way.
    return "ieee" if dtype == torch.float32 else "tf32"


def _check(q, k, v, cos, k_cache, v_cache, past_lengths) -> tuple[int, int, int, int, int]:
    batch, seq_len, q_width = q.shape
    _, num_kv_heads, max_seq, head_dim = k_cache.shape
    num_heads = q_width // head_dim
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or v_cache.shape != k_cache.shape:
        raise ValueError("caches must be (B, H_kv, S_max, D) with a contiguous last dim, k and v alike")
    if num_heads % num_kv_heads or k.shape[-1] != num_kv_heads * head_dim or head_dim & (head_dim - 1):
        raise ValueError(f"unsupported shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, cache {tuple(k_cache.shape)}")
    if cos.shape[-1] * 2 != head_dim or past_lengths.shape != (batch,):
        raise ValueError("cos/sin must be (B, S, D/2) and past_lengths (B,)")
    return batch, seq_len, num_heads, num_kv_heads, head_dim


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def gqa_attention_triton(q, k, v, cos, sin, k_cache, v_cache, past_lengths, kv_len=None, num_splits=None,
                         block_m: int | None = None, block_n: int = 64, decode_warps: int = 4, decode_stages: int = 3):
    """`llamaport::gqa_attention` on Triton kernels; returns (out (B, S, H*D), k_cache, v_cache), caches updated
    in place. kv_len is accepted for the model's signature and ignored: each row's length is read on the device.
    num_splits / block sizes / decode_warps / decode_stages: tuning knobs (benchmarks, tests); defaults otherwise."""
    batch, seq_len, num_heads, num_kv_heads, head_dim = _check(q, k, v, cos, k_cache, v_cache, past_lengths)
    q, k, v, cos, sin = _rows(q), _rows(k), _rows(v), cos.contiguous(), sin.contiguous()
    past_lengths = past_lengths.contiguous()
    groups = num_heads // num_kv_heads
    out = torch.empty(batch, seq_len, num_heads * head_dim, dtype=q.dtype, device=q.device)  # (B, S, H*D)
    scale = head_dim**-0.5
    precision = _precision(q.dtype)
    cache_strides = (*k_cache.stride()[:3], *v_cache.stride()[:3])
    if seq_len == 1:
        _decode(q, k, v, cos, sin, k_cache, v_cache, past_lengths, out, scale, precision, cache_strides,
                num_splits or decode_splits(batch, num_kv_heads, k_cache.shape[2], q.device, block_n),
                block_n, decode_warps, decode_stages)
        return out, k_cache, v_cache
    qrot = torch.empty(batch, seq_len, num_heads, head_dim, dtype=q.dtype, device=q.device)  # (B, S, H, D)
    _rope_cache_kernel[(batch * seq_len, num_heads + 2 * num_kv_heads)](
        q, k, v, cos, sin, qrot, k_cache, v_cache, past_lengths, seq_len,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0), cos.stride(1),
        *cache_strides, NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, **rotary_meta(head_dim, head_dim // 2),
    )
    block_m = block_m or (64 if q.is_cuda else 16)
    _prefill_kernel[(triton.cdiv(seq_len, block_m), batch * num_heads)](
        qrot, k_cache, v_cache, past_lengths, out, seq_len, scale, *cache_strides, out.stride(0), out.stride(1),
        NUM_HEADS=num_heads, GROUPS=groups, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
        PRECISION=precision, num_warps=4 if head_dim <= 64 else 8, num_stages=2,
    )
    return out, k_cache, v_cache


def _decode(q, k, v, cos, sin, k_cache, v_cache, past_lengths, out, scale, precision, cache_strides, splits,
            block_n, num_warps, num_stages) -> None:
    """Two launches: split-K attention over the cached tokens (RoPE on q inside), then the merge, which also rotates
    the new k, writes k/v into the cache and adds the new token's own term."""
    batch, num_kv_heads, _, head_dim = k_cache.shape  # (B, H_kv, S_max, D)
    num_heads = q.shape[-1] // head_dim
    groups = num_heads // num_kv_heads
    partial = torch.empty(batch, num_heads, splits, head_dim, dtype=torch.float32, device=q.device)  # (B,H,NS,D)
    stats = torch.empty(batch, num_heads, splits, 2, dtype=torch.float32, device=q.device)  # (B,H,NS,(max,sum))
    _decode_split_kernel[(batch * num_kv_heads, splits)](
        q, cos, sin, k_cache, v_cache, past_lengths, partial, stats, scale, q.stride(0), cos.stride(0), *cache_strides,
        NUM_KV_HEADS=num_kv_heads, GROUPS=groups, GROUP_PAD=max(16, triton.next_power_of_2(groups)),
        HEAD_DIM=head_dim, NUM_SPLITS=splits, BLOCK_N=block_n, PRECISION=precision, num_warps=num_warps,
        num_stages=num_stages,
    )
    _decode_merge_kernel[(batch * num_heads,)](
        q, k, v, cos, sin, k_cache, v_cache, past_lengths, partial, stats, out, scale, q.stride(0), k.stride(0),
        v.stride(0), cos.stride(0), *cache_strides, NUM_HEADS=num_heads, GROUPS=groups, HEAD_DIM=head_dim,
        NUM_SPLITS=splits, SPLIT_PAD=triton.next_power_of_2(splits),
    )
