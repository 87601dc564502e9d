"""How the codes are chosen: RTN, GPTQ (calibrated, layer by layer) and GGUF's stored blocks.

Written here rather than taken from a library, and why:
- RTN is a few lines of tensor math. torchao's `quantize_affine` would do it, but torchao's wheel is built against
  one torch release (this project pins torch 2.13) and adds nothing the formula needs; ONNX Runtime's
  `quantize_matmul_4bits` does RTN *and* packs in one C++ call, so it cannot serve GPTQ or GGUF codes, which must
  share the packing. We follow ORT's conventions (range includes 0, symmetric scale = signed absmax / -8) and the
  tests pin our packed bytes to ORT's own quantizer.
- GPTQ: ORT's GPTQ path runs through Intel Neural Compressor over a whole ONNX model with all weights in memory;
  ours runs on the eager model one decoder layer at a time (calibration memory: one layer's activations plus a
  K x K Hessian per linear), which the export-at-scale design needs.
- GGUF: the `gguf` package dequantizes but does not expose codes; the block layouts (ggml's Q4_0/Q4_1/Q8_0) are
  read directly from the mapped bytes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .quant import QuantizedWeight

CALIBRATION_TEXT = Path(__file__).with_name("calibration.txt")


# ----------------------------------------------------------------------------------------------------------- RTN
def _block_params(w: torch.Tensor, bits: int, symmetric: bool):
    """Scale and zero per row of `w` (..., g) -> (..., 1) each (zero None for symmetric)."""
    qmax = (1 << bits) - 1
    if symmetric:
        # The value of largest magnitude maps to -2^(bits-1) (ORT's choice): the full range of codes is used.
        amax = w.abs().amax(-1, keepdim=True)
        signed = torch.where(w.amax(-1, keepdim=True) >= amax, amax, -amax)
        scale = signed / -float(1 << (bits - 1))
        return scale, None
    lo = w.amin(-1, keepdim=True).clamp(max=0)  # range includes 0 so the zero point is a valid code
    hi = w.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / qmax
    zero = torch.where(scale == 0, torch.zeros_like(lo), (-lo / scale).round()).clamp(0, qmax)
    return scale, zero


def _codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    mid = float(1 << (bits - 1))
    zp = mid if zero is None else zero
    inv = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)
    return (w * inv).round().add(zp).clamp(0, (1 << bits) - 1)


def rtn(weight: torch.Tensor, bits: int, group: int, symmetric: bool) -> QuantizedWeight:
    """Round-to-nearest per block of `group` inputs. weight (N, K) float."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // group, group)  # (N, K/g, g)
    scale, zero = _block_params(w, bits, symmetric)
    codes = _codes(w, scale, zero, bits)
    zero_t = None if zero is None else zero[..., 0].to(torch.uint8)
    return QuantizedWeight(codes.reshape(n, k).to(torch.uint8), scale[..., 0].contiguous(), zero_t, bits, group)


# ---------------------------------------------------------------------------------------------------------- GPTQ
CLIP_SHRINKS = torch.linspace(1.0, 0.5, 21).tolist()  # candidate range shrink factors for the calibrated method


def _clipped_params(w: torch.Tensor, weight: torch.Tensor, bits: int, symmetric: bool):
    """Block params of `w` (N, G, g) whose block range is shrunk by the factor (of CLIP_SHRINKS) with the least
    `weight`-weighted squared rounding error per block (the reference GPTQ quantizer's `mse=True` grid search).
    Clipping a few outliers buys a finer step for the rest of the block. weight (g,) or (G, g): per-input
    importance, diag(H). Returns scale, zero: (N, G, 1) each (zero None for symmetric)."""
    best_err = best_scale = best_zero = None
    mid = float(1 << (bits - 1))
    for p in CLIP_SHRINKS:
        scale, zero = _block_params(w * p, bits, symmetric)
        deq = (_codes(w, scale, zero, bits) - (mid if zero is None else zero)) * scale
        err = ((deq - w).pow(2) * weight).sum(-1, keepdim=True)  # (N, G, 1)
        if best_err is None:
            best_err, best_scale, best_zero = err, scale, zero
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = None if zero is None else torch.where(better, zero, best_zero)
    return best_scale, best_zero


@contextlib.contextmanager
def _one_thread():
    """GPTQ's column loop is thousands of tiny ops: with torch's intra-op pool on a busy CPU each one waits for the
    other threads (measured 13x slower with 2 threads than 1 on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@_one_thread()
def gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group: int, symmetric: bool,
         damp: float = 0.1, block: int = 128, act_order: bool = True, clip: bool = True) -> QuantizedWeight:
    """GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization", 2022), groups of `group` along K.

    weight (N, K); hessian (K, K) = mean of x x^T over calibration inputs. Columns are quantized one at a time;
    each column's rounding error is spread over the columns not yet quantized through the inverse Hessian's
    Cholesky factor, so the layer's output (not each weight) stays close.

    Options, as in the reference implementations (gptq, AutoGPTQ), measured on SmolLM2 (RESULTS.md):
    - damp: added to diag(H) as a fraction of its mean. A few thousand calibration tokens leave H near-singular
      for the 1536-wide down_proj, and a weak damp (the paper's 0.01) fits the calibration text's own directions:
      the error on held-out text rose above RTN's. 0.1 keeps the compensation to directions the data supports.
    - act_order: quantize columns in descending diag(H) (the inputs with most energy first, while the most
      columns remain to absorb their error). With static groups: each block's scale/zero is fixed from the
      original weights before the loop, so codes stay in contiguous K-blocks (no g_idx), the layout
      MatMulNBits and our packing assume.
    - clip: choose each block's range by a diag(H)-weighted MSE search over shrink factors instead of min/max.
    Without act_order a block's scale/zero is chosen when its first column comes up, from the updated weights.
    """
    n, k = weight.shape
    w = weight.detach().float().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype)
    importance = torch.diag(h).float().reshape(k // group, group)  # (K/g, g)
    blocks = k // group
    scales = torch.zeros(n, blocks)
    zeros = None if symmetric else torch.zeros(n, blocks)
    if act_order:  # static groups: every block's params from the original weights
        wb = w.reshape(n, blocks, group)
        scale, zero = _clipped_params(wb, importance, bits, symmetric) if clip else _block_params(wb, bits, symmetric)
        scales, zeros = scale[..., 0], None if zero is None else zero[..., 0]
        perm = torch.argsort(torch.diag(h), descending=True)
    else:
        perm = torch.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()  # (K, K)
    codes = torch.zeros(n, k, dtype=torch.uint8)  # in permuted column order until the end
    mid = float(1 << (bits - 1))
    block = max(block // group, 1) * group  # blocks hold whole groups, so a group's scale sees its updated columns
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        w1 = w[:, b0:b1].clone()  # (N, blk)
        err1 = torch.zeros_like(w1)
        h1 = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            g = int(perm[col]) // group
            if not act_order and col % group == 0:
                x = w1[:, None, i:i + group]  # (N, 1, g)
                if clip:
                    s, z = _clipped_params(x, importance[g], bits, symmetric)
                else:
                    s, z = _block_params(x, bits, symmetric)
                scales[:, g] = s[:, 0, 0]
                if zeros is not None:
                    zeros[:, g] = z[:, 0, 0]
            scale = scales[:, g:g + 1]  # (N, 1)
            zero = None if zeros is None else zeros[:, g:g + 1]
            q = _codes(w1[:, i:i + 1], scale, zero, bits)  # (N, 1)
            codes[:, col] = q[:, 0].to(torch.uint8)
            deq = (q - (mid if zero is None else zero)) * scale
            err = (w1[:, i] - deq[:, 0]) / h1[i, i]
            w1[:, i:] -= err[:, None] * h1[i, i:][None, :]
            err1[:, i] = err
        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]
    codes = codes[:, torch.argsort(perm)]  # back to the weight's own column order
    zero_t = None if zeros is None else zeros.to(torch.uint8)
    return QuantizedWeight(codes, scales.contiguous(), zero_t, bits, group)


def calibration_ids(tokenizer_encode: Callable[[str], list[int]], path: Path | None, tokens: int,
                    seq_len: int) -> torch.Tensor:
    """(B, seq_len) int64 token ids from the calibration text (the built-in one when path is None)."""
    text = (path or CALIBRATION_TEXT).read_text(encoding="utf-8")
    ids = tokenizer_encode(text)
    while len(ids) < tokens:  # a short --calib file is repeated rather than refused
        ids = ids + ids
    ids = ids[:tokens - tokens % seq_len] if tokens >= seq_len else ids[:seq_len]
    return torch.tensor(ids, dtype=torch.int64).reshape(-1, seq_len)


def _linears(layer: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: m for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}


@torch.no_grad()
def layer_hessians(embed: Callable[[torch.Tensor], torch.Tensor], layers: Iterator[torch.nn.Module], config,
                   input_ids: torch.Tensor) -> Iterator[tuple[int, torch.nn.Module, dict[str, torch.Tensor]]]:
    """Walk decoder layers one at a time: yield (index, layer, {linear name: Hessian (K, K)}).

    `embed(ids)` gives the embeddings, `layers` yields each DecoderLayer when it is needed (loaded from the
    checkpoint then, so one layer's weights are in memory). Memory: the calibration batch's hidden states
    (B, S, hidden), one layer's linear inputs and K x K Hessians. The caller may replace the layer's weights (with
    their quantized values) before resuming; the next layer's inputs are then computed through the quantized
    layer, as GPTQ's sequential mode does.
    """
    from llamaport.models.rope import inverse_frequencies, rotary_cos_sin

    batch, seq = input_ids.shape
    x = embed(input_ids).float()  # (B, S, hidden)
    past = torch.zeros(batch, dtype=torch.int64)
    positions = torch.arange(seq)[None].expand(batch, -1)
    inv_freq, scaling = inverse_frequencies(config)
    cos, sin = rotary_cos_sin(inv_freq, positions, scaling, x.dtype)  # (B, S, D/2)
    shape = (batch, config.num_key_value_heads, seq, config.head_dim)
    for index, layer in enumerate(layers):
        hessians: dict[str, torch.Tensor] = {}

        def hook(name):
            def record(module, args):
                inp = args[0].reshape(-1, args[0].shape[-1]).float()  # (B*S, K)
                h = (inp.T @ inp).double()  # an fp32 product (fast), summed across calls in fp64
                hessians[name] = hessians[name] + h if name in hessians else h
            return record

        handles = [m.register_forward_pre_hook(hook(name)) for name, m in _linears(layer).items()]
        try:
            layer(x, cos, sin, torch.zeros(shape), torch.zeros(shape), past, seq)
        finally:
            for handle in handles:
                handle.remove()
        yield index, layer, {name: h / (batch * seq) for name, h in hessians.items()}
        x, _, _ = layer(x, cos, sin, torch.zeros(shape), torch.zeros(shape), past, seq)  # through the quantized layer


def gptq_layers(embed, layers, config, input_ids: torch.Tensor, bits: int, group: int, symmetric: bool,
                progress: Callable[[int], None] | None = None, **options) -> dict[str, QuantizedWeight]:
    """GPTQ every decoder-layer linear; returns {parameter name: codes} (names of the layers' own modules, so
    fused `qkv_proj` / `gate_up_proj` when the layers come fused). Each layer's weights are replaced by their
    dequantized values before the next layer's inputs are computed (sequential GPTQ). `options`: gptq's
    damp / act_order / clip."""
    out: dict[str, QuantizedWeight] = {}
    for index, layer, hessians in layer_hessians(embed, layers, config, input_ids):
        for name, linear in _linears(layer).items():
            q = gptq(linear.weight, hessians[name], bits, group, symmetric, **options)
            out[f"model.layers.{index}.{name}.weight"] = q
            linear.weight.data = q.dequantize().to(linear.weight.dtype)
        if progress:
            progress(index)
    return out


def gptq_model(model, input_ids: torch.Tensor, bits: int, group: int, symmetric: bool,
               **options) -> dict[str, QuantizedWeight]:
    """GPTQ over an eager model in memory (its weights end up dequantized: it is then its own reference)."""
    return gptq_layers(model.model.embed_tokens, iter(model.model.layers), model.config, input_ids, bits, group,
                       symmetric, **options)


def gptq_checkpoint(checkpoint, input_ids: torch.Tensor, bits: int, group: int, symmetric: bool,
                    progress: Callable[[int], None] | None = None, **options) -> dict[str, QuantizedWeight]:
    """GPTQ streamed from a checkpoint: one fused decoder layer loaded at a time (export at any size)."""
    from llamaport.exporter.reference import _load, _weight
    from llamaport.models.llama import DecoderLayer

    config = checkpoint.config

    def embed(ids):
        table = _weight(checkpoint, "model.embed_tokens.weight", (config.vocab_size, config.hidden_size))
        return torch.nn.functional.embedding(ids, table)

    def layers():
        for index in range(config.num_hidden_layers):
            with torch.device("meta"):
                layer = DecoderLayer(config)
            layer = _load(layer, checkpoint, f"model.layers.{index}.")
            layer.self_attn.fuse_projections()
            layer.mlp.fuse_projections()
            yield layer

    return gptq_layers(embed, layers(), config, input_ids, bits, group, symmetric, progress, **options)


# ---------------------------------------------------------------------------------------------------------- GGUF
# ggml block layouts (ggml-common.h): 32 weights per block.
#   Q4_0: d fp16 | 16 bytes: element j in the low nibble of byte j, element j+16 in its high nibble; w = d*(q-8)
#   Q4_1: d fp16 | m fp16 | 16 bytes as Q4_0;                                                           w = d*q + m
#   Q8_0: d fp16 | 32 int8;                                                                              w = d*q
GGUF_BLOCK = 32


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., 16) uint8 ggml nibble bytes -> (..., 32) codes in element order."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def gguf_block_codes(raw: np.ndarray, type_name: str, shape: tuple[int, int]) -> QuantizedWeight:
    """A GGUF tensor's stored blocks as codes/scales/zeros, unchanged. raw: the tensor's bytes; shape (N, K)."""
    n, k = shape
    nb = k // GGUF_BLOCK
    data = np.ascontiguousarray(raw).view(np.uint8).reshape(n, nb, -1)  # (N, K/32, bytes per block)
    d = data[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # (N, K/32)
    if type_name == "Q4_0":
        codes, zero = _nibbles(data[..., 2:18]), None
        bits = 4
    elif type_name == "Q4_1":
        m = data[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        codes, bits = _nibbles(data[..., 4:20]), 4
        # d*q + m == (q - z)*d with z = -m/d: a float zero point (MatMulNBits takes them in the scale dtype).
        with np.errstate(divide="ignore", invalid="ignore"):
            zero = np.where(d == 0, 0.0, -m / d).astype(np.float32)
        zero = torch.from_numpy(zero)
    elif type_name == "Q8_0":
        codes = (data[..., 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)  # signed -> offset 128
        zero, bits = None, 8
    else:
        raise ValueError(f"GGUF type {type_name} has no carried-codes form (Q4_0, Q4_1, Q8_0 only)")
    return QuantizedWeight(torch.from_numpy(codes.reshape(n, k).copy()), torch.from_numpy(d), zero, bits, GGUF_BLOCK)


CARRIED_GGUF_TYPES = ("Q4_0", "Q4_1", "Q8_0")


def gguf_codes(path: Path, config) -> Callable[[str], QuantizedWeight | None]:
    """name (Hugging Face parameter name) -> the stored codes of that tensor in the GGUF at `path`, Q/K rows moved
    to rotate-half order as the float loader does; None for a tensor stored in another type (requantize it)."""
    from llamaport.models.loaders.gguf_file import hf_name, open_gguf
    from llamaport.models.loaders.permute import interleaved_to_half

    reader = open_gguf(path)
    by_name = {hf_name(t.name): t for t in reader.tensors}

    def get(name: str) -> QuantizedWeight | None:
        tensor = by_name.get(name)
        if tensor is None and name == "lm_head.weight" and config.tie_word_embeddings:
            tensor = by_name.get("model.embed_tokens.weight")
        if tensor is None or tensor.tensor_type.name not in CARRIED_GGUF_TYPES:
            return None
        shape = tuple(int(d) for d in reversed(tensor.shape))  # (N, K): GGUF lists the fastest dimension first
        q = gguf_block_codes(np.asarray(tensor.data), tensor.tensor_type.name, shape)
        heads = {"self_attn.q_proj.weight": config.num_attention_heads,
                 "self_attn.k_proj.weight": config.num_key_value_heads}
        for suffix, h in heads.items():
            if name.endswith(suffix):
                # Whole rows move: codes, scales and zeros of a row go with it (blocks run along K).
                q = q.rows(interleaved_to_half(torch.arange(shape[0]), h))
        return q

    return get
