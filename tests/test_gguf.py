"""GGUF import: weights match transformers' own GGUF loader, vocabularies convert to working tokenizers."""

from __future__ import annotations

import json

import pytest
import torch

from llamaport.models import load_model, read_checkpoint
from llamaport.models.hf_writer import write_hf_folder

SAMPLE = [
    "Hello this is a test",
    "  leading spaces,\ttabs\tand\n\nnewlines   ",
    "Numbers: 3.14159, 2024-11-23, 1e-5 and 100000000.",
    "Emoji 🦙🚀 and accents: déjà vu, naïve café, Straße",
    "中文分词测试，日本語のテキスト、한국어 문장",
    "def f(x):\n    return {'a': [x ** 2 for _ in range(10)]}  # code",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>",
]


@pytest.mark.slow
def test_smollm2_logits_match_transformers_gguf_loader(smollm_gguf):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(smollm_gguf.parent, gguf_file=smollm_gguf.name, dtype=torch.float32)
    ours = load_model(smollm_gguf)
    ids = torch.tensor([[1780, 314, 260, 3575, 282, 4649, 47, 216, 33, 34, 35, 36, 37]])
    with torch.no_grad():
        expected = hf.eval()(input_ids=ids).logits
    assert (ours(ids) - expected).abs().max().item() <= 1e-4


def test_llama2_vocabulary_converts_to_a_tokenizer_model_with_known_ids(llama2_vocab_gguf, tmp_path):
    import sentencepiece as spm

    checkpoint = read_checkpoint(llama2_vocab_gguf)
    assert checkpoint.config is None and checkpoint.tokenizer_kind == "sentencepiece"
    write_hf_folder(checkpoint, tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "tokenizer.model"))
    assert sp.encode("Hello this is a test", add_bos=True) == [1, 15043, 445, 338, 263, 1243]
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["bos_token"] == "<s>"


def test_llama2_tokenizer_model_agrees_with_transformers_llama_tokenizer(llama2_vocab_gguf, tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    write_hf_folder(read_checkpoint(llama2_vocab_gguf), tmp_path / "tok")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(llama2_vocab_gguf.parent, gguf_file=llama2_vocab_gguf.name)
    for text in SAMPLE:
        assert sp.decode(sp.encode(text)) == text
        # transformers' fast Llama tokenizer drops one space of a leading run (" x" -> "▁x"); SentencePiece, which
        # Llama was trained with, keeps it ("▁", "▁x"). We follow SentencePiece, so compare the other texts.
        if not text.startswith(" "):
            assert [1, *sp.encode(text)] == hf(text).input_ids, text


def test_smollm2_tokenizer_json_tokenizes_like_transformers_gguf_tokenizer(smollm_gguf, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    checkpoint = read_checkpoint(smollm_gguf)
    (tmp_path / "tokenizer.json").write_bytes(checkpoint.tokenizer_files["tokenizer.json"])
    ours = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(smollm_gguf.parent, gguf_file=smollm_gguf.name)
    for text in SAMPLE:
        assert ours.encode(text).ids == hf(text).input_ids, text
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text
    assert "<|im_start|>" in checkpoint.tokenizer_files["chat_template.jinja"].decode()


def test_llama3_vocabulary_adds_begin_of_text_and_keeps_special_tokens_whole(llama3_vocab_gguf):
    from tokenizers import Tokenizer

    files = read_checkpoint(llama3_vocab_gguf).tokenizer_files
    tok = Tokenizer.from_str(files["tokenizer.json"].decode())
    ids = tok.encode("<|start_header_id|>user<|end_header_id|> Hello world").ids
    assert ids[0] == 128000 and ids[1] == tok.token_to_id("<|start_header_id|>")
    assert tok.decode(ids[1:], skip_special_tokens=False) == "<|start_header_id|>user<|end_header_id|> Hello world"
