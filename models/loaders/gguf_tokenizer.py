"""Tokenizers stored in GGUF metadata, rebuilt as Hugging Face tokenizer files.

- `tokenizer.ggml.model = llama`: a SentencePiece BPE vocabulary -> `tokenizer.model` (protobuf, via sentencepiece's
  own `sentencepiece_model_pb2`). Llama 1/2, CodeLlama, TinyLlama.
- `tokenizer.ggml.model = gpt2`: byte-level BPE -> `tokenizer.json` via `tokenizers`, with the pre-tokenizer that
  `tokenizer.ggml.pre` names (llama.cpp's table): Llama 3's regex split, SmolLM's one-digit split, or GPT-2's.
Plus `tokenizer_config.json` (special tokens, BOS/EOS flags, chat template) and `chat_template.jinja`.
"""

from __future__ import annotations

import json
from typing import Any

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_PRE = ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx")
_DIGIT_SPLIT_PRE = ("smollm",)  # llama.cpp: "\p{N}" before GPT-2's regex, as SmolLM's tokenizer.json does
_CONTROL, _USER_DEFINED = 3, 4


def _array(reader, key: str) -> list | None:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def tokenizer_files_from_gguf(reader, meta: dict[str, Any]) -> tuple[dict[str, bytes], str | None]:
    model = meta.get("tokenizer.ggml.model")
    tokens = _array(reader, "tokenizer.ggml.tokens")
    if model is None or tokens is None:
        return {}, None
    token_types = _array(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)

    def special(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    files: dict[str, bytes] = {}
    if model == "llama":
        scores = _array(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
        files["tokenizer.model"] = sentencepiece_model(tokens, scores, token_types, meta)
        kind, tokenizer_class = "sentencepiece", "LlamaTokenizer"
    elif model == "gpt2":
        merges = _array(reader, "tokenizer.ggml.merges") or []
        tokenizer = byte_level_bpe(
            tokens, merges, token_types, meta.get("tokenizer.ggml.pre", "default"), special("bos_token_id") if add_bos else None,
            meta.get("tokenizer.ggml.bos_token_id"),
        )
        files["tokenizer.json"] = tokenizer.to_str(pretty=False).encode()
        kind, tokenizer_class = "bpe", "PreTrainedTokenizerFast"
    else:
        return {}, None

    template = meta.get("tokenizer.chat_template")
    config = {
        "tokenizer_class": tokenizer_class,
        "bos_token": special("bos_token_id"),
        "eos_token": special("eos_token_id"),
        "unk_token": special("unknown_token_id"),
        "pad_token": special("padding_token_id"),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("llama.context_length", 2048)),
    }
    if model == "llama":
        config["legacy"] = True  # the original Llama 2 behaviour (no extra space after special tokens)
        config["add_prefix_space"] = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    if template:
        config["chat_template"] = template
        files["chat_template.jinja"] = template.encode()
    files["tokenizer_config.json"] = json.dumps(config, indent=2, ensure_ascii=False).encode()
    return files, kind


def sentencepiece_model(tokens: list[str], scores: list[float], token_types: list[int], meta: dict) -> bytes:
    """A SentencePiece BPE ModelProto with Llama's normalizer (no NFKC, dummy prefix, byte fallback)."""
    from sentencepiece import sentencepiece_model_pb2 as sp

    proto = sp.ModelProto()
    trainer = proto.trainer_spec
    trainer.model_type = sp.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = any(t == 6 for t in token_types)  # 6 = BYTE in both enums
    trainer.unk_id = meta.get("tokenizer.ggml.unknown_token_id", 0)
    trainer.bos_id = meta.get("tokenizer.ggml.bos_token_id", 1)
    trainer.eos_id = meta.get("tokenizer.ggml.eos_token_id", 2)
    trainer.pad_id = meta.get("tokenizer.ggml.padding_token_id", -1)
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    for token, score, token_type in zip(tokens, scores, token_types):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, float(score), int(token_type)  # GGUF reuses SentencePiece's enum
    return proto.SerializeToString()


def byte_level_bpe(tokens, merges, token_types, pre: str, bos_token: str | None, bos_id: int | None):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    llama3 = pre in _LLAMA3_PRE
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False, ignore_merges=llama3))
    if llama3:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre in _DIGIT_SPLIT_PRE:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    if bos_token is not None and bos_id is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B", special_tokens=[(bos_token, bos_id)]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t, kind in zip(tokens, token_types) if kind == _CONTROL]
    )
    tokenizer.add_tokens(
        [AddedToken(t, normalized=False, special=False) for t, kind in zip(tokens, token_types) if kind == _USER_DEFINED]
    )
    return tokenizer
