"""Runtime tokenizers agree with transformers' and stream exactly what a full decode gives."""

from __future__ import annotations

import pytest

from llamaport.models import read_checkpoint
from llamaport.runtime import Tokenizer

SAMPLE = [
    "Hello this is a test",
    "whitespace  runs   and\ttabs\n\n\nnewlines",
    "digits 0123456789 and 3.14159, 1,000,000",
    "emoji 🦙🔥👍🏽 and a family 👨‍👩‍👧",
    "中文：大型语言模型。日本語：こんにちは世界。한국어: 안녕하세요",
    "Ünïcödé àccents: déjà vu, naïve, Straße, Ελληνικά, русский",
    "def main():\n    return [x**2 for x in range(10)]  # code\n",
]


@pytest.fixture(scope="module", params=["llama2", "smollm2"])
def pair(request, llama2_vocab_gguf, smollm_gguf):
    from transformers import AutoTokenizer

    gguf = llama2_vocab_gguf if request.param == "llama2" else smollm_gguf
    ours = Tokenizer.from_files(read_checkpoint(gguf).tokenizer_files)
    return ours, AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.mark.parametrize("text", SAMPLE)
def test_encode_and_decode_agree_with_transformers(pair, text):
    ours, hf = pair
    assert ours.encode(text) == hf(text).input_ids
    ids = ours.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("text", SAMPLE)
def test_streaming_pieces_join_to_the_full_decode_without_broken_characters(pair, text):
    ours, _ = pair
    ids = ours.encode(text, add_special_tokens=False)
    stream = ours.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == ours.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def test_llama2_special_tokens_in_text_are_matched_whole(llama2_vocab_gguf):
    tok = Tokenizer.from_files(read_checkpoint(llama2_vocab_gguf).tokenizer_files)
    ids = tok.encode("<s>[INST] Hi [/INST]", add_special_tokens=False)
    assert ids[0] == 1 and ids.count(1) == 1
    assert tok.decode(ids) == "[INST] Hi [/INST]"
