"""LlamaConfig reads both rope spellings and rejects bad values naming the field."""

from __future__ import annotations

import pytest

from llamaport.models import ConfigError, LlamaConfig

BASE = {"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def test_old_rope_scaling_spelling_and_new_rope_parameters_spelling_agree():
    old = LlamaConfig.from_dict(BASE | {"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}})
    new = LlamaConfig.from_dict(BASE | {"rope_parameters": {"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0}})
    assert old == new
    assert old.rope_theta == 5e5 and old.rope_scaling.rope_type == "linear" and old.rope_scaling.factor == 2.0


def test_defaults_fill_head_dim_and_kv_heads_like_transformers():
    c = LlamaConfig.from_dict({k: v for k, v in BASE.items() if k != "num_key_value_heads"})
    assert c.num_key_value_heads == 4 and c.head_dim == 16 and c.rope_scaling is None


def test_round_trip_through_hf_dict():
    c = LlamaConfig.from_dict(BASE | {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 32}})
    assert LlamaConfig.from_dict(c.to_hf_dict()) == c


@pytest.mark.parametrize(
    "change, field",
    [
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"rope_scaling": {"type": "wavy", "factor": 2.0}}, "rope_scaling.rope_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"hidden_size": -4}, "hidden_size"),
        ({"model_type": "mistral"}, "model_type"),
        ({"rope_scaling": {"type": "llama3", "factor": 8.0}}, "rope_scaling.low_freq_factor"),
        ({"rope_scaling": {"type": "linear", "factr": 2.0}}, "rope_scaling"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_field(change, field):
    with pytest.raises(ConfigError) as err:
        LlamaConfig.from_dict(BASE | change)
    assert err.value.field == field
    assert field in str(err.value)
