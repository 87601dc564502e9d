"""Sizes computed from a config alone (no weights needed)."""

from .config import LlamaConfig


def parameter_count(config: LlamaConfig) -> int:
    c = config
    q = c.hidden_size * c.num_attention_heads * c.head_dim
    kv = 2 * c.hidden_size * c.num_key_value_heads * c.head_dim
    o = c.num_attention_heads * c.head_dim * c.hidden_size
    if c.attention_bias:
        q, kv, o = q + c.num_attention_heads * c.head_dim, kv + 2 * c.num_key_value_heads * c.head_dim, o + c.hidden_size
    mlp = 3 * c.hidden_size * c.intermediate_size + (2 * c.intermediate_size + c.hidden_size if c.mlp_bias else 0)
    per_layer = q + kv + o + mlp + 2 * c.hidden_size
    embeddings = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
    return c.num_hidden_layers * per_layer + embeddings + c.hidden_size
