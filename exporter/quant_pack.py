"""Byte layouts of the quantized initializers, each with its inverse (the tests round-trip every one).

- MatMulNBits B: uint8 (N, K/block, block*bits/8); 4-bit codes two per byte along K, first in the low nibble.
- MatMulNBits zero points: uint8 (N, ceil(K/block * bits/8)), packed like B (4-bit) or one per byte (8-bit); float
  zero points are not packed (same dtype and shape as the scales).
- GatherBlockQuantized data: uint8 (V, H*bits/8), packed along the last axis like B: the same bytes as B (4 and
  8 bits, block sizes even), so a tied embedding reads the head's B.
- ONNX INT4/UINT4 (DequantizeLinear): numpy arrays of ml_dtypes int4/uint4 (K, N); onnx / onnx-ir pack them (two per
  byte, row-major, first in the low nibble), so no hand-written packing here.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch

from .quant import QuantizedWeight


def _pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """(..., 2m) uint8 codes < 16 -> (..., m) bytes, element 2j in the low nibble of byte j."""
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def _unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def pack_matmulnbits_b(q: QuantizedWeight) -> np.ndarray:
    """B (N, K/block, block*bits/8) uint8."""
    n, k = q.shape
    codes = _np(q.codes).reshape(n, k // q.group, q.group)
    return np.ascontiguousarray(_pack_nibbles(codes) if q.bits == 4 else codes)


def unpack_matmulnbits_b(b: np.ndarray, bits: int) -> np.ndarray:
    """-> codes (N, K) uint8."""
    codes = _unpack_nibbles(b) if bits == 4 else b
    return codes.reshape(b.shape[0], -1)


def pack_zero_points(q: QuantizedWeight, dtype: np.dtype = np.float32) -> np.ndarray | None:
    """MatMulNBits zero_points: packed uint8 for integer zeros, (N, K/block) `dtype` for float ones, None if none."""
    if q.zero is None:
        return None
    if q.float_zero:
        return np.ascontiguousarray(_np(q.zero).astype(dtype))
    zero = _np(q.zero).astype(np.uint8)  # (N, K/block)
    if q.bits == 8:
        return np.ascontiguousarray(zero)
    if zero.shape[1] % 2:
        zero = np.pad(zero, ((0, 0), (0, 1)))
    return np.ascontiguousarray(_pack_nibbles(zero))


def unpack_zero_points(packed: np.ndarray, blocks: int, bits: int) -> np.ndarray:
    """Packed uint8 zero points -> (N, blocks) uint8."""
    return (_unpack_nibbles(packed) if bits == 4 else packed)[:, :blocks]


def pack_gather_data(q: QuantizedWeight) -> np.ndarray:
    """GatherBlockQuantized uint8 data (V, H*bits/8), quantized along the last axis."""
    codes = _np(q.codes)
    return np.ascontiguousarray(_pack_nibbles(codes) if q.bits == 4 else codes)


def unpack_gather_data(data: np.ndarray, bits: int) -> np.ndarray:
    return _unpack_nibbles(data) if bits == 4 else data


def dq_weight(q: QuantizedWeight) -> np.ndarray:
    """DequantizeLinear input (K, N): int4/int8 (codes - midpoint) when symmetric, uint4/uint8 codes otherwise."""
    codes = _np(q.codes).T  # (K, N)
    if q.symmetric:
        signed = codes.astype(np.int16) - (1 << (q.bits - 1))
        return np.ascontiguousarray(signed.astype(ml_dtypes.int4 if q.bits == 4 else np.int8))
    return np.ascontiguousarray(codes.astype(ml_dtypes.uint4 if q.bits == 4 else np.uint8))


def dq_zero_point(q: QuantizedWeight) -> np.ndarray | None:
    """DequantizeLinear zero point (K/block, N), same type as the weight; None when symmetric or float zeros."""
    if q.zero is None or q.float_zero:
        return None
    return np.ascontiguousarray(_np(q.zero).T.astype(ml_dtypes.uint4 if q.bits == 4 else np.uint8))


def dq_codes(weight: np.ndarray, zero: np.ndarray | None, bits: int) -> np.ndarray:
    """Inverse of dq_weight: (K, N) int4/uint4 array -> codes (N, K) uint8."""
    w = weight.astype(np.int16)
    if weight.dtype in (np.dtype(ml_dtypes.int4), np.dtype(np.int8)):
        w = w + (1 << (bits - 1))
    return w.astype(np.uint8).T
