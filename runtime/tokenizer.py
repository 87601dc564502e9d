"""Tokenizers for engine directories: SentencePiece `tokenizer.model` (Llama 1/2) or `tokenizer.json` (Llama 3,
SmolLM2) through `tokenizers`, plus incremental detokenization for streaming.

Special-token handling follows transformers' Llama tokenizer with `legacy=True` (the Llama 2 default): special
tokens written in text (`<s>`, `</s>`) are matched whole, and each plain-text chunk is encoded as SentencePiece
does, dummy-prefix space included.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from llamaport.errors import LlamaportError

from . import validate


class Tokenizer:
    """encode/decode with the model's own vocabulary. Build with `Tokenizer.from_dir` or `from_files`."""

    def __init__(self, backend, kind: str, config: dict):
        self._backend, self.kind, self.config = backend, kind, config
        self.add_bos = bool(config.get("add_bos_token", kind == "sentencepiece"))
        self.bos_token, self.eos_token = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
        if kind == "sentencepiece":
            sp = backend
            self.vocab_size = sp.get_piece_size()
            self.special_ids = {i for i in range(self.vocab_size) if sp.is_control(i) or sp.is_unknown(i)}
            specials = sorted((sp.id_to_piece(i) for i in self.special_ids if not sp.is_unknown(i)), key=len, reverse=True)
            self._special_split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        else:
            self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
            self.special_ids = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
        self.bos_token_id = self.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_token_id = self.token_to_id(self.eos_token) if self.eos_token else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> "Tokenizer":
        try:
            config = json.loads(files["tokenizer_config.json"]) if "tokenizer_config.json" in files else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LlamaportError(f"tokenizer_config.json is not valid JSON ({e}); re-copy or re-export it") from None
        if "tokenizer.json" in files:
            from tokenizers import Tokenizer as HFTokenizer

            try:
                backend = HFTokenizer.from_str(files["tokenizer.json"].decode())
            except Exception as e:  # tokenizers raises its own Exception type on any malformed file
                raise LlamaportError(f"tokenizer.json is not a readable tokenizer ({e}); re-copy or re-export "
                                     "it") from None
            return cls(backend, "bpe", config)
        if "tokenizer.model" in files:
            import sentencepiece as spm

            try:
                backend = spm.SentencePieceProcessor(model_proto=files["tokenizer.model"])
            except Exception as e:  # sentencepiece raises RuntimeError on a damaged model proto
                raise LlamaportError(f"tokenizer.model is not a readable SentencePiece model ({e}); re-copy or "
                                     "re-export it") from None
            return cls(backend, "sentencepiece", config)
        raise LlamaportError("no tokenizer.json or tokenizer.model found; pass token ids instead of text")

    @classmethod
    def from_dir(cls, folder: str | Path) -> "Tokenizer":
        folder = Path(folder)
        names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
        files = {n: (folder / n).read_bytes() for n in names if (folder / n).exists()}
        if "tokenizer.json" not in files and "tokenizer.model" not in files:
            raise LlamaportError(f"{folder} has no tokenizer.json or tokenizer.model; pass token ids instead of text")
        return cls.from_files(files)

    # ------------------------------------------------------------------ encode / decode
    def token_to_id(self, token: str) -> int | None:
        if self.kind == "sentencepiece":
            i = self._backend.piece_to_id(token)
            return None if i == self._backend.unk_id() and token != self._backend.id_to_piece(i) else i
        return self._backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids; BOS is added when the tokenizer asks for it and add_special_tokens is True."""
        validate.text("the prompt", text)
        if self.kind == "bpe":
            return self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        ids: list[int] = [self._backend.bos_id()] if add_special_tokens and self.add_bos else []
        chunks = self._special_split.split(text) if self._special_split else [text]
        for chunk in chunks:
            if not chunk:
                continue
            piece_id = self._backend.piece_to_id(chunk)
            if piece_id in self.special_ids and self._backend.id_to_piece(piece_id) == chunk:
                ids.append(piece_id)
            else:
                ids.extend(self._backend.encode(chunk))
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "bpe":
            return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
            return self._backend.decode(ids)
        return "".join(
            self._backend.id_to_piece(i) if i in self.special_ids else self._backend.decode([i]) for i in ids
        )

    def stream(self, skip_special_tokens: bool = True) -> "IncrementalDecoder":
        return IncrementalDecoder(self, skip_special_tokens)


def _token_text(value) -> str | None:
    """tokenizer_config.json spells special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class IncrementalDecoder:
    """Text pieces as tokens arrive; never splits a UTF-8 character, and the pieces join to the full decode.

    Decodes a short window of context tokens before the new ones and emits only the new suffix, so tokenizers that
    strip a leading space (SentencePiece) or need byte-fallback neighbours still decode new tokens correctly.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the context window
        self.read_offset = 0  # tokens before this are already emitted
        self.emitted = ""

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], self.skip)
        text = decode(self.ids[self.prefix_offset :], self.skip)
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            piece = text[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            self.emitted += piece
            return piece
        return ""

    def flush(self) -> str:
        """Whatever is left (an incomplete character at the very end decodes as U+FFFD, as a full decode does)."""
        full = self.tokenizer.decode(self.ids, self.skip)
        rest = full[len(self.emitted) :] if full.startswith(self.emitted) else ""
        self.emitted += rest
        return rest
