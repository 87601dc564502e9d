"""Rotary position embeddings, real-valued, with the Hugging Face scaling variants.

`inverse_frequencies` gives the static per-pair frequencies (default, linear, llama3, yarn). Dynamic NTK scaling
depends on the current sequence length, so `rotary_cos_sin` computes it from the positions inside the graph,
without Python-side state, which matches transformers' `dynamic_rope_update` for caches that only grow.
Everything is computed in float32 (as transformers does) and cast to the activation dtype at the end.
"""

from __future__ import annotations

import math

import torch

from .config import LlamaConfig


def _default_inv_freq(base: float | torch.Tensor, dim: int) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim  # (D/2,)
    return 1.0 / (base**exponents)


def inverse_frequencies(config: LlamaConfig) -> tuple[torch.Tensor, float]:
    """(inv_freq (D/2,) float32, attention_scaling) for the config's rope type at its base length."""
    dim, base, rs = config.head_dim, config.rope_theta, config.rope_scaling
    inv_freq = _default_inv_freq(base, dim)
    if rs is None or rs.rope_type in ("default", "dynamic"):
        return inv_freq, 1.0
    if rs.rope_type == "linear":
        return inv_freq / rs.factor, 1.0
    if rs.rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, rs), 1.0
    if rs.rope_type == "yarn":
        return _yarn_inv_freq(config)
    raise AssertionError(rs.rope_type)  # LlamaConfig validation rejects anything else


def _llama3_inv_freq(inv_freq: torch.Tensor, rs) -> torch.Tensor:
    # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    old_len = rs.original_max_position_embeddings
    low_wavelen, high_wavelen = old_len / rs.low_freq_factor, old_len / rs.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
    smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_inv_freq(config: LlamaConfig) -> tuple[torch.Tensor, float]:
    rs, dim, base = config.rope_scaling, config.head_dim, config.rope_theta
    factor, orig = rs.factor, rs.original_max_position_embeddings

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = rs.attention_factor
    if attention_factor is None:
        if rs.mscale and rs.mscale_all_dim:
            attention_factor = float(mscale(factor, rs.mscale) / mscale(factor, rs.mscale_all_dim))
        else:
            attention_factor = mscale(factor)

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(orig / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(rs.beta_fast or 32), correction_dim(rs.beta_slow or 1)
    if rs.truncate is None or rs.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(torch.float32) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extrapolation_weight = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight
    return inv_freq, attention_factor


def dynamic_inv_freq(config: LlamaConfig, positions: torch.Tensor) -> torch.Tensor:
    """Dynamic NTK: the base grows once the longest sequence in the batch passes max_position_embeddings."""
    dim, rs, max_pos = config.head_dim, config.rope_scaling, config.max_position_embeddings
    seq_len = torch.clamp(positions.max() + 1, min=max_pos)  # () int64
    base = config.rope_theta * ((rs.factor * seq_len / max_pos) - (rs.factor - 1)) ** (dim / (dim - 2))
    return _default_inv_freq(base, dim)


def rotary_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, attention_scaling: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, S, D/2) for integer positions (B, S): one value per rotated pair.

    Half width is what ONNX RotaryEmbedding and TensorRT rope plugins take; `apply_rotary` pairs dim i with i + D/2.
    """
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # (B, S, D/2)
    return (freqs.cos() * attention_scaling).to(dtype), (freqs.sin() * attention_scaling).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, S, D) rotated in the rotate-half layout by cos/sin (B, S, D/2).

    Same arithmetic as transformers' `x * cos + rotate_half(x) * sin`, so fp32 results are bit-identical.
    """
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, S, D/2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + (-x2) * sin, x2 * cos + x1 * sin), dim=-1)
