"""The fp32 eager reference for export verification, run one decoder layer at a time.

Verification needs the eager model's logits over a schedule (a prefill of right-padded prompts, then
single-token decode steps whose tokens are given). Holding the fp32 model would cost two copies of an fp16
engine's weights; instead each layer is loaded from the checkpoint, runs every step of the schedule against its
own KV cache, and is freed before the next. The hidden states of all steps, (B, S_step, hidden) each, are all that
passes between layers. The modules and their order are the eager model's own (models/llama.py), so the logits
equal `LlamaForCausalLM`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from llamaport.errors import CheckpointError
from llamaport.models.llama import DecoderLayer, RMSNorm, rope_cos_sin, tp_linear
from llamaport.models.loaders.checkpoint import Checkpoint
from llamaport.models.rope import inverse_frequencies


@dataclass
class Step:
    input_ids: torch.Tensor  # (B, S) right-padded
    past_lengths: torch.Tensor  # (B,) tokens already in each row's cache
    input_lengths: torch.Tensor  # (B,) real tokens of each row in this step


def schedule_steps(prompts: list[list[int]], tokens: list[np.ndarray]) -> list[Step]:
    """The prefill of `prompts`, then one decode step per entry of `tokens` ((B,) ids each)."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.int64)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = torch.tensor(prompt)
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int64)
    steps = [Step(ids, torch.zeros_like(lengths), lengths)]
    past = lengths.clone()
    for token in tokens:
        steps.append(Step(torch.from_numpy(np.asarray(token, dtype=np.int64))[:, None], past, torch.ones_like(lengths)))
        past = past + 1
    return steps


def _weight(checkpoint: Checkpoint, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    tensor = checkpoint.tensor(name).to(torch.float32)
    if tuple(tensor.shape) != tuple(shape):
        raise CheckpointError(
            f"{checkpoint.source}: tensor '{name}' has shape {tuple(tensor.shape)}, but config.json implies "
            f"{tuple(shape)}; the config does not match the weights"
        )
    return tensor


def _load(module: torch.nn.Module, checkpoint: Checkpoint, prefix: str) -> torch.nn.Module:
    state = {name: _weight(checkpoint, prefix + name, p.shape) for name, p in module.state_dict(keep_vars=True).items()}
    module.load_state_dict(state, assign=True)
    return module.requires_grad_(False).eval()


def _head_weight(checkpoint: Checkpoint) -> torch.Tensor:
    config = checkpoint.config
    shape = (config.vocab_size, config.hidden_size)
    if config.tie_word_embeddings or "lm_head.weight" not in checkpoint.tensor_names():
        return _weight(checkpoint, "model.embed_tokens.weight", shape)
    return _weight(checkpoint, "lm_head.weight", shape)


def layerwise_logits(checkpoint: Checkpoint, steps: list[Step],
                     progress: Callable[[], None] | None = None, all_positions: bool = False) -> list[np.ndarray]:
    """fp32 eager logits (B, V) at each row's last real token, per step; `progress()` after each layer.
    `all_positions`: (B, S_step, V) per step instead."""
    config = checkpoint.config
    batch = steps[0].input_ids.shape[0]
    inv_freq, scaling = inverse_frequencies(config)
    with torch.inference_mode():
        embedding = _weight(checkpoint, "model.embed_tokens.weight", (config.vocab_size, config.hidden_size))
        hidden = [F.embedding(step.input_ids, embedding) for step in steps]  # each (B, S_step, hidden)
        del embedding
        rope, kv_lens = [], []
        for step in steps:
            positions = step.past_lengths[:, None] + torch.arange(step.input_ids.shape[1])  # (B, S_step)
            rope.append(rope_cos_sin(config, inv_freq, scaling, positions, torch.float32))  # (B, S_step, D/2) each
            kv_lens.append(int(positions.max()) + 1)  # eager reads only the filled part of the cache
        # The cache holds what the steps fill, not the engine's S_max: zeroing 4096 positions per layer cost
        # ~0.1 s of a SmolLM2 export, and eager attention reads only the filled part either way.
        cache_shape = (batch, config.num_key_value_heads, max(kv_lens), config.head_dim)
        for index in range(config.num_hidden_layers):
            with torch.device("meta"):
                layer = DecoderLayer(config)
            layer = _load(layer, checkpoint, f"model.layers.{index}.")
            k_cache, v_cache = torch.zeros(cache_shape), torch.zeros(cache_shape)  # (B, H_kv, S_filled, D)
            for s, step in enumerate(steps):
                cos, sin = rope[s]
                hidden[s], k_cache, v_cache = layer(hidden[s], cos, sin, k_cache, v_cache, step.past_lengths,
                                                    kv_lens[s])
            del layer, k_cache, v_cache
            if progress is not None:
                progress()
        with torch.device("meta"):
            norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        norm = _load(norm, checkpoint, "model.norm.")
        head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False, device="meta")
        head.weight = torch.nn.Parameter(_head_weight(checkpoint), requires_grad=False)
        logits = []
        for s, step in enumerate(steps):
            x = norm(hidden[s])  # (B, S_step, hidden)
            if not all_positions:
                index = (step.input_lengths - 1)[:, None, None].expand(-1, 1, x.shape[-1])
                x = x.gather(1, index)  # (B, 1, hidden)
            tp = config.pretraining_tp
            out = tp_linear(head, x, tp, "out") if tp > 1 else head(x)  # (B, S_step or 1, V)
            logits.append(out.float().numpy() if all_positions else out[:, -1].float().numpy())
    return logits
