"""A compact Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention) with an explicit static KV cache.

The cache is a list with one (k, v) pair per layer, each (B, H_kv, S_max, D); `past_lengths` (B,) says how many
tokens each row already holds. New tokens are written at those positions and the updated caches are returned.
No Python-side state and no data-dependent control flow on the export path: this is the module the exporter traces.
Parameter names match Hugging Face's, so a transformers state dict loads as is.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import gqa_attention
from .config import LlamaConfig
from .rope import dynamic_inv_freq, inverse_frequencies, rotary_cos_sin

KVCache = list[tuple[torch.Tensor, torch.Tensor]]
AttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def tp_linear(layer: nn.Linear, x: torch.Tensor, tp: int, split: str) -> torch.Tensor:
    """`layer(x)`, computed in `pretraining_tp` slices the way Llama 2's pretraining did.

    split="out": slices of output features, concatenated. split="in": slices of input features, summed
    (this changes float rounding, which is why the option exists at all).
    """
    if tp == 1:
        return layer(x)
    if split == "out":
        parts = [F.linear(x, w) for w in layer.weight.chunk(tp, dim=0)]
        y = torch.cat(parts, dim=-1)
    else:
        xs = x.chunk(tp, dim=-1)
        y = sum(F.linear(xi, wi) for xi, wi in zip(xs, layer.weight.chunk(tp, dim=1)))
    return y if layer.bias is None else y + layer.bias


def _fused_linear(*layers: nn.Linear) -> nn.Linear:
    """A Linear whose output is the concatenation of `layers`' outputs (weights moved, not copied twice)."""
    weight = torch.cat([layer.weight for layer in layers])
    bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def rope_cos_sin(config: LlamaConfig, inv_freq: torch.Tensor, attention_scaling: float, positions: torch.Tensor,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, S, D/2) for absolute positions (B, S); dynamic NTK derives its frequencies from the positions."""
    if config.rope_type == "dynamic":
        inv_freq = dynamic_inv_freq(config, positions)
    return rotary_cos_sin(inv_freq, positions, attention_scaling, dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32 even for fp16/bf16 activations (a sum of squares overflows fp16). F.rms_norm with
        # its weight exports as one ONNX RMSNormalization node.
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.tp = config.pretraining_tp
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        # Swappable so the exporter can route attention through a plugin op with the same semantics.
        self.attention_fn: AttentionFn = gqa_attention
        self.qkv_proj: nn.Linear | None = None  # set by fuse_projections()

    def fuse_projections(self) -> None:
        """One (q|k|v) matmul instead of three: same numbers, fewer and larger GEMVs for deployment graphs."""
        self.qkv_proj = _fused_linear(self.q_proj, self.k_proj, self.v_proj)
        del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x, cos, sin, k_cache, v_cache, past_lengths, kv_len=None):
        if self.qkv_proj is not None:
            kv_width = self.num_kv_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split([self.num_heads * self.head_dim, kv_width, kv_width], dim=-1)
        else:
            q = tp_linear(self.q_proj, x, self.tp, "out")  # (B, S, H_q*D)
            k = tp_linear(self.k_proj, x, self.tp, "out")  # (B, S, H_kv*D)
            v = tp_linear(self.v_proj, x, self.tp, "out")  # (B, S, H_kv*D)
        if kv_len is None:  # the plugin op's signature: it finds the filled length itself
            out, k_cache, v_cache = self.attention_fn(q, k, v, cos, sin, k_cache, v_cache, past_lengths)
        else:
            out, k_cache, v_cache = self.attention_fn(q, k, v, cos, sin, k_cache, v_cache, past_lengths, kv_len=kv_len)
        return tp_linear(self.o_proj, out, self.tp, "in"), k_cache, v_cache


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        bias, self.tp = config.mlp_bias, config.pretraining_tp
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.gate_up_proj: nn.Linear | None = None  # set by fuse_projections()

    def fuse_projections(self) -> None:
        self.gate_up_proj = _fused_linear(self.gate_proj, self.up_proj)
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        gate = tp_linear(self.gate_proj, x, self.tp, "out")
        up = tp_linear(self.up_proj, x, self.tp, "out")
        return tp_linear(self.down_proj, F.silu(gate) * up, self.tp, "in")


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, k_cache, v_cache, past_lengths, kv_len=None):
        h, k_cache, v_cache = self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, past_lengths, kv_len)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k_cache, v_cache


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and the final norm: hidden states out."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        inv_freq, self.attention_scaling = inverse_frequencies(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (D/2,) float32

    def new_cache(self, batch_size: int, max_seq: int, dtype=None, device=None) -> KVCache:
        """Zeroed caches, one (k, v) pair per layer, each (B, H_kv, S_max, D)."""
        c = self.config
        dtype = dtype or self.embed_tokens.weight.dtype
        device = device or self.embed_tokens.weight.device
        shape = (batch_size, c.num_key_value_heads, max_seq, c.head_dim)
        return [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(c.num_hidden_layers)
        ]

    def forward(self, input_ids, past_lengths, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        x = self.embed_tokens(input_ids)  # (B, S, hidden)
        positions = past_lengths.to(torch.int64)[:, None] + torch.arange(input_ids.shape[1], device=x.device)
        cos, sin = rope_cos_sin(self.config, self.inv_freq, self.attention_scaling, positions, x.dtype)  # (B, S, D/2)
        # Eager reads only the filled part of the cache; one device sync per forward to learn how much that is.
        # Traced graphs (export, or attention routed through the plugin op) keep S_max and mask instead.
        traced = torch.compiler.is_exporting() or self.layers[0].self_attn.attention_fn is not gqa_attention
        kv_len = None if traced else int(positions.max()) + 1
        new_cache: KVCache = []
        for layer, (k_cache, v_cache) in zip(self.layers, cache):
            x, k_cache, v_cache = layer(x, cos, sin, k_cache, v_cache, past_lengths, kv_len)
            new_cache.append((k_cache, v_cache))
        return self.norm(x), new_cache


class LlamaForCausalLM(nn.Module):
    """Llama with a language-model head.

    `model(input_ids)` returns logits (B, S, V) for a fresh sequence. With a cache:
    `logits, cache = model(input_ids, past_lengths, cache, last_only=True, input_lengths=...)` where input_ids is
    (B, S) right-padded, past_lengths (B,) int64, cache from `new_cache`. With last_only the logits are (B, 1, V)
    at each row's last real token (input_lengths[b] - 1; S - 1 when not given).
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def new_cache(self, batch_size: int, max_seq: int, dtype=None, device=None) -> KVCache:
        return self.model.new_cache(batch_size, max_seq, dtype, device)

    def fuse_projections(self) -> "LlamaForCausalLM":
        """Merge q/k/v and gate/up projections (for export; pretraining_tp > 1 keeps its sliced form)."""
        if self.config.pretraining_tp == 1:
            for layer in self.model.layers:
                layer.self_attn.fuse_projections()
                layer.mlp.fuse_projections()
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        past_lengths: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        input_lengths: torch.Tensor | None = None,
    ):
        batch, seq_len = input_ids.shape
        use_cache = cache is not None
        if past_lengths is None:
            past_lengths = torch.zeros(batch, dtype=torch.int64, device=input_ids.device)
        if cache is None:
            cache = self.new_cache(batch, seq_len, device=input_ids.device)
        hidden, cache = self.model(input_ids, past_lengths, cache)  # (B, S, hidden)
        if last_only:
            if input_lengths is None:
                hidden = hidden[:, -1:]
            else:
                index = (input_lengths.to(torch.int64) - 1)[:, None, None].expand(-1, 1, hidden.shape[-1])
                hidden = hidden.gather(1, index)  # (B, 1, hidden)
        tp = self.config.pretraining_tp
        logits = tp_linear(self.lm_head, hidden, tp, "out") if tp > 1 else self.lm_head(hidden)
        return (logits, cache) if use_cache else logits


class LlamaForSequenceClassification(nn.Module):
    """Llama with a classification/reward head pooled at each row's last non-pad token (as transformers does)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch, seq_len = input_ids.shape
        past = torch.zeros(batch, dtype=torch.int64, device=input_ids.device)
        hidden, _ = self.model(input_ids, past, self.model.new_cache(batch, seq_len, device=input_ids.device))
        pad = self.config.pad_token_id
        if pad is None:
            if batch != 1 and not torch.compiler.is_exporting():
                raise ValueError("batches of more than one sequence need config.pad_token_id to find each last token")
            last = torch.full((batch,), seq_len - 1, dtype=torch.int64, device=input_ids.device)
        else:
            # Rightmost non-pad token: argmax of position * is_real (0 when the row is all padding).
            steps = torch.arange(seq_len, device=input_ids.device, dtype=torch.int64)
            last = (steps * (input_ids != pad).to(torch.int64)).argmax(-1)
        pooled = hidden[torch.arange(batch, device=input_ids.device), last]  # (B, hidden)
        return self.score(pooled)  # (B, num_labels)
