"""Rotary position embedding as a Triton kernel: rotate-half and interleaved layouts, partial rotary dim.

The same source runs on a GPU and, under `TRITON_INTERPRET=1`, on CPU tensors (how CI checks it). cos/sin come
precomputed from the model's own rotary code (`llamaport.models.rope.rotary_cos_sin`), so every rope_scaling type
(default, linear, dynamic, llama3, yarn) is covered by one kernel: the kernel only applies the rotation.

`rotate_row` is also the RoPE stage of the GQA attention kernels (plugins/triton_attention.py).
"""

from __future__ import annotations

import enum

import torch
import triton
import triton.language as tl

from llamaport.models.rope import apply_rotary


class RotaryLayout(enum.Enum):
    """Which dims form a rotated pair: (i, i + R/2) as in HF Llama, or (2i, 2i + 1) as in Meta/GPT-J weights."""

    ROTATE_HALF = "rotate_half"
    INTERLEAVED = "interleaved"


@triton.jit
def rotate_row(src_ptr, dst_ptr, cos_ptr, sin_ptr, HEAD_DIM: tl.constexpr, ROT_HALF: tl.constexpr,
               HALF_PAD: tl.constexpr, INTERLEAVED: tl.constexpr, TAIL_PAD: tl.constexpr):
    """Rotate one head's row of HEAD_DIM values from src to dst; cos/sin hold ROT_HALF values for this token.

    Math in float32, rounded once to dst's dtype. Dims past 2*ROT_HALF (partial rotary) are copied unchanged.
    """
    pair = tl.arange(0, HALF_PAD)  # (HALF_PAD,) one lane per rotated pair
    live = pair < ROT_HALF
    if INTERLEAVED:
        first, second = 2 * pair, 2 * pair + 1
    else:
        first, second = pair, pair + ROT_HALF
    x1 = tl.load(src_ptr + first, mask=live, other=0.0).to(tl.float32)
    x2 = tl.load(src_ptr + second, mask=live, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + pair, mask=live, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + pair, mask=live, other=0.0).to(tl.float32)
    out_ty = dst_ptr.dtype.element_ty
    tl.store(dst_ptr + first, (x1 * c - x2 * s).to(out_ty), mask=live)
    tl.store(dst_ptr + second, (x2 * c + x1 * s).to(out_ty), mask=live)
    if TAIL_PAD > 0:  # partial rotary: the rest of the head passes through
        tail = 2 * ROT_HALF + tl.arange(0, TAIL_PAD)
        keep = tail < HEAD_DIM
        tl.store(dst_ptr + tail, tl.load(src_ptr + tail, mask=keep, other=0.0).to(out_ty), mask=keep)


@triton.jit
def _rotary_kernel(x_ptr, out_ptr, cos_ptr, sin_ptr, seq_len, stride_xb, stride_xs, stride_ob, stride_os,
                   stride_cb, stride_cs, HEAD_DIM: tl.constexpr, ROT_HALF: tl.constexpr, HALF_PAD: tl.constexpr,
                   INTERLEAVED: tl.constexpr, TAIL_PAD: tl.constexpr):
    token, head = tl.program_id(0), tl.program_id(1)  # grid (B*S, H)
    b, s = token // seq_len, token % seq_len
    src = x_ptr + b * stride_xb + s * stride_xs + head * HEAD_DIM
    dst = out_ptr + b * stride_ob + s * stride_os + head * HEAD_DIM
    table = b * stride_cb + s * stride_cs
    rotate_row(src, dst, cos_ptr + table, sin_ptr + table, HEAD_DIM, ROT_HALF, HALF_PAD, INTERLEAVED, TAIL_PAD)


def rotary_meta(head_dim: int, rot_half: int) -> dict:
    """The constexpr block sizes `rotate_row` takes for a head of head_dim with rot_half rotated pairs."""
    if not 0 < 2 * rot_half <= head_dim:
        raise ValueError(f"rotary dim {2 * rot_half} must be in 1..head_dim {head_dim}")
    tail = head_dim - 2 * rot_half
    return dict(HEAD_DIM=head_dim, ROT_HALF=rot_half, HALF_PAD=triton.next_power_of_2(rot_half),
                TAIL_PAD=triton.next_power_of_2(tail) if tail else 0)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def rotary_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
                  layout: RotaryLayout = RotaryLayout.ROTATE_HALF) -> torch.Tensor:
    """x (B, S, H*D) rotated by cos/sin (B, S, R/2); R = 2 * cos.shape[-1] <= D (partial rotary: the rest passes)."""
    batch, seq_len, width = x.shape
    x, cos, sin = _last_dim_contiguous(x), cos.contiguous(), sin.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)  # (B, S, H*D)
    meta = rotary_meta(width // num_heads, cos.shape[-1])
    _rotary_kernel[(batch * seq_len, num_heads)](
        x, out, cos, sin, seq_len, x.stride(0), x.stride(1), out.stride(0), out.stride(1), cos.stride(0),
        cos.stride(1), INTERLEAVED=layout is RotaryLayout.INTERLEAVED, **meta,
    )
    return out


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
                     layout: RotaryLayout = RotaryLayout.ROTATE_HALF) -> torch.Tensor:
    """The semantics `rotary_triton` must match, built on the model's own `apply_rotary` (rotate-half, full dim):
    interleaved pairs are gathered into rotate-half order and back; dims past the rotary dim pass through."""
    batch, seq_len, width = x.shape
    heads = x.view(batch, seq_len, num_heads, width // num_heads).transpose(1, 2)  # (B, H, S, D)
    rot = 2 * cos.shape[-1]
    part, rest = heads[..., :rot], heads[..., rot:]
    if layout is RotaryLayout.INTERLEAVED:
        order = torch.cat([torch.arange(0, rot, 2), torch.arange(1, rot, 2)]).to(x.device)  # (R,)
        part = apply_rotary(part[..., order], cos, sin)[..., torch.argsort(order)]
    else:
        part = apply_rotary(part, cos, sin)
    return torch.cat([part, rest], dim=-1).transpose(1, 2).reshape(batch, seq_len, width)
