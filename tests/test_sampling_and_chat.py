"""Sampling options and chat templates, without a model."""

from __future__ import annotations

import numpy as np

from llamaport.runtime.chat import LLAMA2_CHAT_TEMPLATE, render
from llamaport.runtime.sampling import Sampler, SamplingParams, seen_mask


def test_builtin_llama2_chat_format_matches_metas_reference_layout():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    text = render(LLAMA2_CHAT_TEMPLATE, messages, bos_token="<s>", eos_token="</s>")
    assert text == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Bye [/INST]"


def test_repetition_penalty_steers_greedy_away_from_seen_tokens():
    logits = np.array([[2.0, 1.9, 0.0]])
    seen = seen_mask([[0]], logits.shape[-1])
    assert Sampler(SamplingParams())(logits, seen)[0] == 0
    assert Sampler(SamplingParams(repetition_penalty=1.2))(logits, seen)[0] == 1


def test_min_p_and_top_p_never_sample_filtered_tokens():
    logits = np.log(np.array([[0.6, 0.3, 0.09, 0.01]]))
    for params in (SamplingParams(temperature=1.0, min_p=0.2, seed=0), SamplingParams(temperature=1.0, top_p=0.85, seed=0)):
        sampler = Sampler(params)
        picks = {int(sampler(logits)[0]) for _ in range(200)}
        assert picks == {0, 1}


def test_top_p_keeps_the_best_token_even_when_it_alone_exceeds_p():
    logits = np.log(np.array([[0.95, 0.05]]))
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=1))
    assert {int(sampler(logits)[0]) for _ in range(50)} == {0}


def test_stop_string_search_cuts_the_text_at_the_first_match_in_the_new_tail():
    from llamaport.runtime.engine import Engine

    texts = ["Answer: 42.\nQ"]
    assert Engine._hit_stop(texts, 0, ["\nQ"], new_chars=1)
    assert texts == ["Answer: 42."]
    assert not Engine._hit_stop(["no stop here"], 0, ["\nQ"], new_chars=4)
