"""Weight-only quantization: the typed options (`QuantSpec`) and the one set of numbers every graph form is built from.

A quantized weight is `QuantizedWeight`: unsigned codes (N, K) in [0, 2^bits), one scale per block of `group`
inputs (N, K/group), and a zero point per block that is either absent (symmetric: the midpoint 2^(bits-1)),
integer codes (asymmetric RTN/GPTQ) or floats (GGUF Q4_1's stored minimums, as `-min / scale`). Dequantized:
`w = (codes - zero) * scale`, the formula MatMulNBits, DequantizeLinear and GatherBlockQuantized all share, so one
computation serves every target (`quant_lowering`) and the eager model (`llamaport.models.quantized`).

Options are resolved and validated in one place (`resolve_spec`); the rest of the code reads typed fields only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

from llamaport.errors import LlamaportError
from llamaport.models.quantized import QuantizedWeight  # noqa: F401 - the codes type, shared with the eager model

GROUP_SIZES = (32, 64, 128)
# TensorRT's INT4 weight-only path (DequantizeLinear block-quantized along K) takes block sizes 64 and 128 and
# symmetric weights only (zero point absent or zero).
TRT_GROUP_SIZES = (64, 128)


class QuantMethod(str, enum.Enum):
    RTN = "rtn"  # round to nearest, per block
    GPTQ = "gptq"  # calibrated: error-compensating column order (Frantar et al. 2022), layer by layer
    GGUF = "gguf"  # the codes a GGUF file already stores (Q4_0 / Q4_1 / Q8_0), carried unchanged


class LmHeadMode(str, enum.Enum):
    INT8 = "int8"
    INT4 = "int4"
    NONE = "none"  # head and embedding stay in the activation dtype


class AccuracyLevel(enum.IntEnum):
    """MatMulNBits' `accuracy_level`: how ONNX Runtime treats the activations while multiplying."""

    EXACT = 0  # activations stay fp32 (accumulation in fp32); the dequantized weights are computed exactly
    INT8 = 4  # activations quantized to int8 per block (VNNI dot products); measured faster on this CPU


# Measured on this machine (AVX-512 VNNI, 2 cores), one SmolLM2-sized layer, decode (M=1): 4x faster than level 0
# (benchmarks/int4.py levels; RESULTS.md). Costs ~0.3-0.9 of max |logit diff| on SmolLM2, enough to flip near-tied
# first tokens; EXACT keeps fp32 activations (but ORT's 8-bit MatMulNBits is very slow at level 0: RESULTS.md).
DEFAULT_ACCURACY_LEVEL = AccuracyLevel.INT8


@dataclass(frozen=True)
class QuantSpec:
    """What `--quant int4 --method --group-size --lm-head --calib` ask for. None fields are resolved per model."""

    method: QuantMethod = QuantMethod.RTN
    group_size: int | None = None  # None: the largest of 128/64/32 that divides every linear's K (and the target takes)
    symmetric: bool | None = None  # None: the method's natural choice (asymmetric for ort/onnx, symmetric for trt)
    lm_head: LmHeadMode = LmHeadMode.INT8
    accuracy_level: AccuracyLevel = DEFAULT_ACCURACY_LEVEL
    calib: Path | None = None  # calibration text for GPTQ; None: the built-in exporter/calibration.txt
    # Tokens of calibration text used (in sequences of calib_seq_len): the built-in text's ~6k. With 1k, GPTQ's
    # Hessians (K up to the FFN width) were near-singular and it fit the text: worse than RTN elsewhere.
    calib_tokens: int = 6144
    calib_seq_len: int = 512
    bits: int = 4

    @property
    def head_bits(self) -> int | None:
        return {LmHeadMode.INT8: 8, LmHeadMode.INT4: 4, LmHeadMode.NONE: None}[self.lm_head]


def parse_spec(method: str = "rtn", group_size: int | None = None, lm_head: str = "int8", symmetric: bool | None = None,
               calib: str | Path | None = None, exact: bool = False) -> QuantSpec:
    """CLI strings -> QuantSpec, with one error per bad flag."""
    try:
        m = QuantMethod(method)
    except ValueError:
        raise LlamaportError(f"--method {method!r} is not supported; use one of "
                             f"{', '.join(x.value for x in QuantMethod)}") from None
    try:
        head = LmHeadMode(lm_head)
    except ValueError:
        raise LlamaportError(f"--lm-head {lm_head!r} is not supported; use one of "
                             f"{', '.join(x.value for x in LmHeadMode)}") from None
    if group_size is not None and group_size not in GROUP_SIZES:
        raise LlamaportError(f"--group-size {group_size} is not supported; use one of {', '.join(map(str, GROUP_SIZES))}")
    if calib is not None and not Path(calib).is_file():
        raise LlamaportError(f"--calib {calib}: no such file; pass a UTF-8 text file (or leave --calib out to use "
                             "the built-in calibration text)")
    level = AccuracyLevel.EXACT if exact else DEFAULT_ACCURACY_LEVEL
    return QuantSpec(m, group_size, symmetric, head, level, Path(calib) if calib else None)


def resolve_spec(spec: QuantSpec, target: str, linears: Mapping[str, tuple[int, int]]) -> QuantSpec:
    """Fill the None fields for this model and target, and refuse what the target or the shapes cannot take.

    `linears`: weight name -> (N, K) of every linear that will be quantized (the head included when it is).
    """
    trt = target.startswith("trt")  # trt and trt-native: the same INT4 weight-only path
    symmetric = spec.symmetric
    if symmetric is None:
        symmetric = trt  # asymmetric codes use all 16 levels for lopsided blocks; TensorRT takes symmetric only
    if trt and not symmetric:
        raise LlamaportError("--target trt takes symmetric int4 weights only (TensorRT's INT4 weight-only path has no "
                             "zero points); drop --asymmetric (symmetric is the default for trt), or use --target ort "
                             "/ onnx for asymmetric codes")
    if trt and spec.method is QuantMethod.GGUF:
        raise LlamaportError("--method gguf carries GGUF's 32-wide blocks (and Q4_1's minimums), which TensorRT's "
                             "int4 path cannot take (block 64 or 128, symmetric); use --method rtn or gptq with "
                             "--group-size 64 or 128 for --target trt")
    if spec.method is QuantMethod.GGUF:
        if spec.symmetric is not None:
            raise LlamaportError("--method gguf carries the file's own codes (Q4_0 symmetric, Q4_1 with minimums); "
                                 "drop --symmetric/--asymmetric")
        return replace(spec, group_size=32, symmetric=symmetric)
    allowed = TRT_GROUP_SIZES if trt else GROUP_SIZES
    group = spec.group_size
    if trt and group is not None and group not in TRT_GROUP_SIZES:
        raise LlamaportError(f"--group-size {group} is not accepted by TensorRT's int4 path; use --group-size 64 or "
                             "128 for --target trt")
    if group is None:
        fits = [g for g in sorted(allowed, reverse=True) if all(k % g == 0 for _, k in linears.values())]
        if not fits:
            name, (_, k) = next((n, s) for n, s in linears.items() if s[1] % min(allowed))
            raise LlamaportError(f"weight '{name}' has {k} input features, which no supported group size "
                                 f"({', '.join(map(str, allowed))}) divides; this model cannot be quantized to int4 "
                                 "blocks: export it without --quant")
        group = fits[0]
    for name, (_, k) in linears.items():
        if k % group:
            ok = [g for g in allowed if k % g == 0]
            fix = f"use --group-size {ok[-1]}" if ok else "no supported group size divides it"
            raise LlamaportError(f"--group-size {group} does not divide the {k} input features of weight '{name}'; "
                                 f"{fix}")
    return replace(spec, group_size=group, symmetric=symmetric)
