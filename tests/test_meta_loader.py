"""Meta's original layout (params.json + consolidated.NN.pth, model-parallel shards) loads to identical logits."""

from __future__ import annotations

import json

import torch
from tiny import save_hf_model

from llamaport.models import load_model
from llamaport.models.loaders.meta import _LAYER_MAP
from llamaport.models.loaders.permute import half_to_interleaved


def write_meta_shards(hf_model, folder, shards: int = 2) -> None:
    """Split a transformers model into Meta's layout: interleaved Q/K rows, each layer cut along its parallel dim."""
    c = hf_model.config
    sd = hf_model.state_dict()
    meta = {"tok_embeddings.weight": (sd["model.embed_tokens.weight"], 1), "norm.weight": (sd["model.norm.weight"], None),
            "output.weight": (sd["lm_head.weight"], 0)}
    for i in range(c.num_hidden_layers):
        for meta_name, (hf_name, dim) in _LAYER_MAP.items():
            w = sd[f"model.layers.{i}.{hf_name}"]
            if meta_name == "attention.wq.weight":
                w = half_to_interleaved(w, c.num_attention_heads)
            elif meta_name == "attention.wk.weight":
                w = half_to_interleaved(w, c.num_key_value_heads)
            meta[f"layers.{i}.{meta_name}"] = (w, dim)
    for s in range(shards):
        part = {k: (w.clone() if dim is None else w.chunk(shards, dim=dim)[s].clone()) for k, (w, dim) in meta.items()}
        torch.save(part, folder / f"consolidated.{s:02d}.pth")
    params = {"dim": c.hidden_size, "n_layers": c.num_hidden_layers, "n_heads": c.num_attention_heads,
              "n_kv_heads": c.num_key_value_heads, "vocab_size": c.vocab_size, "norm_eps": c.rms_norm_eps,
              "multiple_of": 16, "max_seq_len": c.max_position_embeddings}
    (folder / "params.json").write_text(json.dumps(params))


def test_two_model_parallel_shards_load_to_identical_logits(tmp_path):
    # intermediate_size 176 is what Meta's formula gives for dim 64 with multiple_of 16.
    hf = save_hf_model(tmp_path / "hf", "gqa", intermediate_size=176)
    meta_dir = tmp_path / "meta"
    meta_dir.mkdir()
    write_meta_shards(hf, meta_dir)
    ours = load_model(meta_dir)
    ids = torch.randint(3, 96, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
    assert torch.equal(ours(ids), load_model(tmp_path / "hf")(ids))
    assert (ours(ids) - expected).abs().max().item() <= 1e-5
