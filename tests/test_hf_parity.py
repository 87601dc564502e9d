"""Our eager Llama matches transformers' LlamaForCausalLM logits (fp32, max |diff| <= 1e-5)."""

from __future__ import annotations

import pytest
import torch
from tiny import VARIANTS, save_hf_model

from llamaport.models import LlamaForSequenceClassification, load_model

TOL = 1e-5


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_hf_model(folder, request.param)
    return request.param, hf, load_model(folder)


def test_full_prompt_logits_match_transformers(pair):
    _, hf, ours = pair
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
    got = ours(ids)
    assert got.shape == expected.shape == (2, 12, 96)
    assert (got - expected).abs().max().item() <= TOL


def test_prefill_then_decode_through_static_cache_matches_transformers(pair):
    _, hf, ours = pair
    ids = torch.randint(3, 96, (2, 14), generator=torch.Generator().manual_seed(2))
    prompt, steps = 6, 8
    with torch.no_grad():
        out = hf(input_ids=ids[:, :prompt], use_cache=True)
        expected = [out.logits[:, -1]]
        past = out.past_key_values
        for t in range(prompt, prompt + steps):
            out = hf(input_ids=ids[:, t : t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            expected.append(out.logits[:, -1])

        cache = ours.new_cache(batch_size=2, max_seq=32)
        logits, cache = ours(ids[:, :prompt], torch.zeros(2, dtype=torch.int64), cache, last_only=True)
        got = [logits[:, -1]]
        for t in range(prompt, prompt + steps):
            logits, cache = ours(ids[:, t : t + 1], torch.full((2,), t), cache, last_only=True)
            got.append(logits[:, -1])
    diffs = [(g - e).abs().max().item() for g, e in zip(got, expected)]
    assert max(diffs) <= TOL, diffs


def test_cache_rows_at_different_lengths_match_separate_runs(pair):
    """Row 0 holds 3 tokens, row 1 holds 7: one batched decode step equals each row decoded alone."""
    _, _, ours = pair
    ids = torch.randint(3, 96, (2, 8), generator=torch.Generator().manual_seed(3))
    lengths = [3, 7]
    with torch.no_grad():
        alone = [ours(ids[b : b + 1, : lengths[b] + 1])[:, -1] for b in range(2)]
        cache = ours.new_cache(batch_size=2, max_seq=16)
        # Right-padded prefill: each row's real tokens first; the padding lands beyond its length and is overwritten.
        _, cache = ours(ids[:, :7], torch.zeros(2, dtype=torch.int64), cache, last_only=True,
                        input_lengths=torch.tensor(lengths))
        step = torch.stack([ids[0, 3], ids[1, 7]])[:, None]
        logits, _ = ours(step, torch.tensor(lengths), cache, last_only=True)
    for b in range(2):
        assert (logits[b, -1] - alone[b][0]).abs().max().item() <= TOL


def test_sequence_classification_pools_last_non_pad_token_like_transformers(tmp_path):
    hf = save_hf_model(tmp_path, "gqa", cls_name="LlamaForSequenceClassification", pad_token_id=0, num_labels=3)
    ours = load_model(tmp_path, task="sequence-classification")
    assert isinstance(ours, LlamaForSequenceClassification)
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(4))
    ids[0, 6:] = 0  # right padding on row 0
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
    got = ours(ids)
    assert got.shape == (2, 3)
    assert (got - expected).abs().max().item() <= TOL
