"""Single-launch Triton kernels for our TensorRT plugins' AOT implementations (plugins/tensorrt_plugins.py).

Why not launch plugins/triton_attention.py's kernels directly: a `tensorrt.plugin.aot_impl` returns ONE compiled
kernel and its launch parameters, and that kernel takes its arguments in one fixed order: input tensor pointers,
then the int32 scalar arguments, then output tensor pointers ("extra_args: Symbolic expressions for scalar inputs
to the kernel, located after the tensor inputs and before the tensor outputs", TensorRT
python/packaging/bindings_wheel/tensorrt/plugin/_lib.py, aot_impl; the same layout as the sample's circ_pad_kernel
in samples/python/quickly_deployable_plugins/oait_kernels.py). There is no workspace either. triton_attention.py's
GQA needs three launches and two scratch tensors (rotated q, split-K partials), so the plugin gets this fused
kernel, with the same semantics (llamaport.models.attention.gqa_attention); RoPE reuses triton_rotary.rotate_row.

`gqa_plugin_kernel`, one program per (block of BLOCK_M new tokens, batch row, kv head), all GROUPS query heads of
that kv head in turn:
- rotates its block's new keys and writes them, and its new values, into the cache outputs at past_lengths[b] + s;
- attends over keys 0..past + s: old keys (< past_lengths[b]) from the cache, new keys from the k input rotated
  in registers. No program reads a cache slot another program writes in the same launch, so one launch is
  race-free, and with the cache outputs aliased to the cache inputs the update is in place.
Scores, softmax and the accumulator are float32; q is pre-scaled by 1/sqrt(D); keys are rounded to the cache dtype
before the dot, exactly as they are read back from the cache on later steps.

Tested on the CPU under TRITON_INTERPRET=1 against the eager reference (tests/test_tensorrt.py), and compiled to
PTX for sm_90 here (no GPU needed for that); not yet run inside TensorRT.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_rotary import rotary_meta, rotate_row

GQA_BLOCK_M = 16  # tl.dot needs >= 16 rows; decode (S = 1) uses one block
GQA_BLOCK_N = 32
# One pipeline stage: the K/V loop's software pipelining took fp32 tiles to 132 KB of shared memory per block
# (triton 3.9, sm_90), past the 48 KB a kernel gets without an explicit opt-in that TensorRT's AOT launch cannot be
# told about; one stage needs 20 KB (fp32) / 10 KB (fp16, bf16). tests/test_tensorrt.py pins the 48 KB bound.
GQA_COMPILE_OPTIONS = {"num_warps": 4, "num_stages": 1}
SHARED_MEMORY_LIMIT = 48 * 1024


@triton.jit
def _rotate_tile(x_ptr, row_offsets, live, cos_ptr, sin_ptr, table_offsets, HEAD_DIM: tl.constexpr):
    """Rows of HEAD_DIM values at x_ptr + row_offsets, rotate-half RoPE in float32: (N, D).

    cos/sin hold D/2 values per token at table_offsets: x[i] * cos[i % D/2] -/+ x[partner] * sin[i % D/2].
    """
    HALF: tl.constexpr = HEAD_DIM // 2
    d = tl.arange(0, HEAD_DIM)
    partner = (d + HALF) % HEAD_DIM  # the other element of d's rotated pair
    sign = tl.where(d < HALF, -1.0, 1.0)
    x = tl.load(x_ptr + row_offsets[:, None] + d[None, :], mask=live[:, None], other=0.0).to(tl.float32)
    xp = tl.load(x_ptr + row_offsets[:, None] + partner[None, :], mask=live[:, None], other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + table_offsets[:, None] + (d % HALF)[None, :], mask=live[:, None], other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + table_offsets[:, None] + (d % HALF)[None, :], mask=live[:, None], other=0.0).to(tl.float32)
    return x * c + sign[None, :] * xp * s


@triton.jit
def gqa_plugin_kernel(
    # inputs, in GQA_PLUGIN.inputs order: q/k/v (B, S, H*D), cos/sin (B, S, D/2), caches (B, H_kv, S_max, D),
    # past_lengths (B,) int64
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, past_ptr,
    # int32 scalars (TensorRT extra_args)
    seq_len, max_seq,
    # outputs, in GQA_PLUGIN.outputs order: out (B, S, H*D), caches (aliased to kc_ptr / vc_ptr)
    out_ptr, kc_out_ptr, vc_out_ptr,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    GROUPS: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
    HALF: tl.constexpr = HEAD_DIM // 2
    block_m, bkv = tl.program_id(0), tl.program_id(1)  # grid (cdiv(S, BLOCK_M), B * H_kv)
    b, kv = bkv // NUM_KV_HEADS, bkv % NUM_KV_HEADS
    past = tl.load(past_ptr + b).to(tl.int32)
    d = tl.arange(0, HEAD_DIM)
    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (M,) this block's new tokens, index within S
    row_live = rows < seq_len
    tokens = b * seq_len + rows  # (M,) token index into q/k/v and cos/sin
    cache_base = (b * NUM_KV_HEADS + kv).to(tl.int64) * max_seq  # first slot of this (row, kv head) cache

    # 1. this block's new keys (rotated) and values into the caches
    k_rows = tokens.to(tl.int64) * (NUM_KV_HEADS * HEAD_DIM) + kv * HEAD_DIM
    k_new = _rotate_tile(k_ptr, k_rows, row_live, cos_ptr, sin_ptr, tokens.to(tl.int64) * HALF, HEAD_DIM)
    slots = cache_base + past + rows  # (M,)
    tl.store(kc_out_ptr + slots[:, None] * HEAD_DIM + d[None, :], k_new.to(kc_out_ptr.dtype.element_ty),
             mask=row_live[:, None])
    v_new = tl.load(v_ptr + k_rows[:, None] + d[None, :], mask=row_live[:, None], other=0.0)
    tl.store(vc_out_ptr + slots[:, None] * HEAD_DIM + d[None, :], v_new.to(vc_out_ptr.dtype.element_ty),
             mask=row_live[:, None])

    # 2. attention, one query head of the group at a time
    end = past + tl.minimum((block_m + 1) * BLOCK_M, seq_len)  # keys this block can see: 0..end-1
    scale = 1.0 / tl.sqrt(HEAD_DIM * 1.0)
    for g in tl.static_range(GROUPS):
        head = kv * GROUPS + g
        q_rows = tokens.to(tl.int64) * (NUM_HEADS * HEAD_DIM) + head * HEAD_DIM
        q = _rotate_tile(q_ptr, q_rows, row_live, cos_ptr, sin_ptr, tokens.to(tl.int64) * HALF, HEAD_DIM)
        q = (q * scale).to(kc_ptr.dtype.element_ty)  # (M, D) in the cache dtype for tl.dot
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for start in range(0, end, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)  # (N,) key positions
            old = cols < past  # already in the cache
            new = (cols >= past) & (cols < end)  # written by this step: read from the inputs
            new_tok = b * seq_len + tl.where(new, cols - past, 0)
            new_rows = new_tok.to(tl.int64) * (NUM_KV_HEADS * HEAD_DIM) + kv * HEAD_DIM
            k_old = tl.load(kc_ptr + (cache_base + cols)[:, None] * HEAD_DIM + d[None, :], mask=old[:, None], other=0.0)
            k_in = _rotate_tile(k_ptr, new_rows, new, cos_ptr, sin_ptr, new_tok.to(tl.int64) * HALF, HEAD_DIM)
            keys = tl.where(old[:, None], k_old, k_in.to(k_old.dtype))  # (N, D)
            v_old = tl.load(vc_ptr + (cache_base + cols)[:, None] * HEAD_DIM + d[None, :], mask=old[:, None], other=0.0)
            v_in = tl.load(v_ptr + new_rows[:, None] + d[None, :], mask=new[:, None], other=0.0)
            vals = tl.where(old[:, None], v_old, v_in.to(v_old.dtype))  # (N, D)
            scores = tl.dot(q, tl.trans(keys), input_precision=PRECISION, out_dtype=tl.float32)  # (M, N)
            visible = (cols[None, :] <= (past + rows)[:, None]) & (cols < end)[None, :]
            scores = tl.where(visible, scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(scores - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(vals.dtype), vals, input_precision=PRECISION,
                                                 out_dtype=tl.float32)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(out_ptr + q_rows[:, None] + d[None, :], out.to(out_ptr.dtype.element_ty), mask=row_live[:, None])


@triton.jit
def rope_plugin_kernel(
    x_ptr, cos_ptr, sin_ptr,  # inputs, ROPE_PLUGIN order: x (B, S, H*D), cos/sin (B, S, D/2)
    tokens,  # int32 scalar: B * S
    y_ptr,  # output (B, S, H*D)
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, ROT_HALF: tl.constexpr, HALF_PAD: tl.constexpr,
    TAIL_PAD: tl.constexpr,
):
    token, head = tl.program_id(0), tl.program_id(1)  # grid (B*S, H)
    if token < tokens:
        row = (token.to(tl.int64) * NUM_HEADS + head) * HEAD_DIM
        table = token.to(tl.int64) * ROT_HALF
        rotate_row(x_ptr + row, y_ptr + row, cos_ptr + table, sin_ptr + table, HEAD_DIM, ROT_HALF, HALF_PAD, False,
                   TAIL_PAD)


# ------------------------------------------------------------------------------------------------ compile specs
TRITON_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int64": "i64", "int32": "i32"}


def gqa_signature(dtype: str) -> dict[str, str]:
    """Triton signature of gqa_plugin_kernel's runtime arguments for activations of NumPy dtype name `dtype`."""
    t = f"*{TRITON_TYPES[dtype]}"
    return {"q_ptr": t, "k_ptr": t, "v_ptr": t, "cos_ptr": t, "sin_ptr": t, "kc_ptr": t, "vc_ptr": t,
            "past_ptr": "*i64", "seq_len": "i32", "max_seq": "i32", "out_ptr": t, "kc_out_ptr": t, "vc_out_ptr": t}


def gqa_constexprs(num_heads: int, num_kv_heads: int, head_dim: int, dtype: str = "float16") -> dict:
    if head_dim < 16 or head_dim & (head_dim - 1) or num_heads % num_kv_heads:
        raise ValueError(f"the GQA plugin kernel takes power-of-two head_dim >= 16 and num_heads divisible by "
                         f"num_kv_heads; got head_dim {head_dim}, heads {num_heads}/{num_kv_heads}")
    # fp32 engines keep full fp32 products (tl.dot's default on fp32 inputs is tf32); fp16/bf16 dots accumulate
    # in fp32 either way.
    return {"NUM_HEADS": num_heads, "NUM_KV_HEADS": num_kv_heads, "HEAD_DIM": head_dim,
            "BLOCK_M": GQA_BLOCK_M, "BLOCK_N": GQA_BLOCK_N, "PRECISION": "ieee" if dtype == "float32" else "tf32"}


def rope_signature(dtype: str) -> dict[str, str]:
    t = f"*{TRITON_TYPES[dtype]}"
    return {"x_ptr": t, "cos_ptr": t, "sin_ptr": t, "tokens": "i32", "y_ptr": t}


def rope_constexprs(num_heads: int, head_dim: int, rot_half: int) -> dict[str, int]:
    return {"NUM_HEADS": num_heads, **rotary_meta(head_dim, rot_half)}


def compile_ptx(kernel, signature: dict[str, str], constexprs: dict, target=None, options: dict | None = None):
    """(kernel name, PTX text, threads per block, shared bytes) from triton.compile, as TensorRT's AOT sample does
    (samples/python/quickly_deployable_plugins/qdp_defs.py, _compile_circ_pad_aot). `target`: a
    triton.backends.compiler.GPUTarget, default the current GPU; give one to compile without a GPU."""
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=target, options=options)
    return (compiled.metadata.name, compiled.asm["ptx"], compiled.metadata.num_warps * 32, compiled.metadata.shared)
