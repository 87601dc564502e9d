"""Block-quantized weights in the eager model: the exact weights an int4/int8 engine computes with.

`QuantizedWeight` is the one set of numbers per weight (codes, scales, zero points) that the exporter lowers to
every graph form; `quantize_model` is the single place where `nn.Linear` / `nn.Embedding` modules are swapped for
their dequantized-weight counterparts (the gpt-fast pattern: one handler, one obvious place), so `check` can
compare an int4 engine with its own dequantized reference (graph correctness) and with the float model (quality).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizedWeight:
    """Block-quantized (N, K) weight: codes (N, K) uint8, scales (N, K/group) float32, zero per `zero`'s kind.

    `w = (codes - zero) * scale` per block of `group` consecutive inputs; zero None means the midpoint 2^(bits-1)
    (symmetric), uint8 means integer zero points, float32 means float ones (GGUF Q4_1: zero = -min / scale).
    """

    codes: torch.Tensor  # (N, K) uint8 in [0, 2^bits)
    scales: torch.Tensor  # (N, K/group) float32
    zero: torch.Tensor | None  # None | (N, K/group) uint8 | (N, K/group) float32
    bits: int
    group: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    @property
    def float_zero(self) -> bool:
        return self.zero is not None and self.zero.is_floating_point()

    def zero_points(self) -> torch.Tensor:
        """(N, K/group) zero points as float32 (the midpoint where none are stored)."""
        if self.zero is None:
            return torch.full_like(self.scales, float(1 << (self.bits - 1)))
        return self.zero.float()

    def dequantize(self, scale_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, K) float32 weights, what MatMulNBits / DequantizeLinear compute from these numbers.

        scale_dtype=torch.float16 gives what a graph with fp16 scales (the `trt` form) computes: scales rounded to
        fp16 and the product rounded to fp16.
        """
        n, k = self.shape
        blocks = self.codes.reshape(n, k // self.group, self.group).float()  # (N, K/g, g)
        scales = self.scales.to(scale_dtype)
        if scale_dtype == torch.float32:
            w = (blocks - self.zero_points()[..., None]) * scales[..., None]
        else:
            w = ((blocks - self.zero_points()[..., None]).to(scale_dtype) * scales[..., None]).float()
        return w.reshape(n, k)

    def rows(self, index: torch.Tensor) -> "QuantizedWeight":
        """The same weight with output rows reordered (rows are independent: blocks run along K)."""
        zero = None if self.zero is None else self.zero[index]
        return QuantizedWeight(self.codes[index], self.scales[index], zero, self.bits, self.group)

    @staticmethod
    def cat(parts: list["QuantizedWeight"]) -> "QuantizedWeight":
        """Weights stacked along N (fused q|k|v, gate|up): the fused graph initializer's codes."""
        first = parts[0]
        if any(p.bits != first.bits or p.group != first.group or (p.zero is None) != (first.zero is None)
               for p in parts):
            raise ValueError("fused parts were quantized with different layouts")
        if first.zero is not None and len({p.zero.dtype for p in parts}) != 1:
            raise ValueError("fused parts mix float and integer zero points")
        zero = None if first.zero is None else torch.cat([p.zero for p in parts])
        return QuantizedWeight(torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]), zero,
                               first.bits, first.group)


class DequantizedLinear(nn.Module):
    """nn.Linear over a block-quantized weight. It keeps the codes and dequantizes per call, so an eager reference
    holds the quantized model (about a quarter of fp32's bytes in uint8 codes), not a float copy of it."""

    def __init__(self, q: QuantizedWeight, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.q, self.dtype = q, dtype
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:  # (N, K), what the graph multiplies by
        return self.q.dequantize().to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class DequantizedEmbedding(nn.Module):
    def __init__(self, q: QuantizedWeight, dtype: torch.dtype):
        super().__init__()
        self.q, self.dtype = q, dtype

    @property
    def weight(self) -> torch.Tensor:  # (V, H)
        return self.q.dequantize().to(self.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.q.rows(ids.reshape(-1))  # dequantize only the rows looked up
        return rows.dequantize().to(self.dtype).reshape(*ids.shape, -1)


def quantize_model(model: nn.Module, weights: Mapping[str, QuantizedWeight]) -> nn.Module:
    """Swap every module whose `<name>.weight` is in `weights` for its dequantized form, in place.

    Names are the model's own parameter names (fused `qkv_proj` / `gate_up_proj` after `fuse_projections()`);
    `model.embed_tokens.weight` swaps the embedding; a tied head given only as the embedding follows it.
    """
    modules = dict(model.named_modules())
    for name, q in weights.items():
        path = name.removesuffix(".weight")
        module = modules.get(path)
        if module is None:
            raise KeyError(f"no module {path!r} in the model for quantized weight {name!r}")
        parent_name, _, attr = path.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        if isinstance(module, nn.Embedding):
            new: nn.Module = DequantizedEmbedding(q, module.weight.dtype)
        elif isinstance(module, (nn.Linear, DequantizedLinear)):
            new = DequantizedLinear(q, module.bias, module.weight.dtype)
        else:
            raise TypeError(f"{path} is a {type(module).__name__}; only Linear and Embedding weights quantize")
        setattr(parent, attr, new)
    return model
