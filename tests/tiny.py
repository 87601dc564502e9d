"""Tiny random Llama checkpoints written by transformers, for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    initializer_range=0.2,  # larger than the default so logits differ clearly between tokens
    bos_token_id=1,
    eos_token_id=2,
)

# name -> overrides of TINY. Covers MHA/GQA/MQA, each rope scaling, tied heads, biases and pretraining_tp.
VARIANTS = {
    "mha": dict(num_key_value_heads=4),
    "gqa": dict(),
    "mqa": dict(num_key_value_heads=1),
    "rope_linear": dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    "rope_dynamic": dict(
        max_position_embeddings=8, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}
    ),
    "rope_llama3": dict(
        rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
        }
    ),
    "rope_yarn": dict(
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}
    ),
    "tied": dict(tie_word_embeddings=True),
    "attention_bias": dict(attention_bias=True, mlp_bias=True),
    "pretraining_tp2": dict(pretraining_tp=2),
}


def hf_config(variant: str, **more):
    from transformers import LlamaConfig as HFLlamaConfig

    return HFLlamaConfig(**(TINY | VARIANTS[variant] | more))


def save_hf_model(folder: Path, variant: str = "gqa", seed: int = 0, cls_name: str = "LlamaForCausalLM", **more):
    """Write a random transformers model of `variant` to folder; return the (eval, fp32) transformers model."""
    import transformers

    torch.manual_seed(seed)
    config = hf_config(variant, **more)
    config._attn_implementation = "eager"
    model = getattr(transformers, cls_name)(config).eval()
    model.save_pretrained(folder)
    return model
