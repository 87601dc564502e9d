"""`Engine`: tokenizer + backend + generation loop, the API applications embed.

    engine = Engine.open("engine_dir")                      # backend "auto": onnxruntime for onnx/ort engines
    out = engine.generate("Plants create energy through", SamplingParams(max_new_tokens=64))
    for piece in engine.stream(prompt, params): ...
    engine.chat([{"role": "user", "content": "Hi"}], params)
    engine.logits(token_ids)                                # (S, V) per-position logits
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from llamaport import enginedir
from llamaport.enginedir import MANIFEST, REFETCH, BackendName, EngineDirError, Manifest, Task
from llamaport.errors import LlamaportError

from .backends import open_backend
from .chat import LLAMA2_CHAT_TEMPLATE, load_template, render
from . import validate
from .generate import Generation
from .sampling import SamplingParams
from .tokenizer import Tokenizer

DEVICES = ("cpu", "cuda")


@dataclass
class GenerationResult:
    text: str | None
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    prompt_token_ids: list[int] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    truncated_tokens: int = 0  # prompt tokens dropped from the front by truncate=True


def _sampling_params(params) -> SamplingParams:
    if params is None:
        return SamplingParams()
    if not isinstance(params, SamplingParams):  # a dict or keyword soup would fail later with an AttributeError
        raise LlamaportError(f"params must be a SamplingParams, got {type(params).__name__}; "
                             "use SamplingParams(max_new_tokens=..., ...)")
    return params


class _Cancelled(Exception):
    """Raised inside a streaming generation when its consumer has gone away."""


def _open_tokenizer(folder: Path) -> Tokenizer | None:
    """The engine's tokenizer, or None when it was exported without one; an unreadable file names itself."""
    present = [name for name in enginedir.TOKENIZER_MODELS if (folder / name).exists()]
    if not present:
        return None
    try:
        return Tokenizer.from_dir(folder)
    except LlamaportError as e:  # the tokenizer names the file; say which engine directory it is in
        raise EngineDirError(f"{folder}: {e}") from None
    except Exception as e:  # tokenizers / sentencepiece raise their own types for a file they cannot parse
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise EngineDirError(f"{folder / present[0]} cannot be read as a tokenizer ({reason}); {REFETCH}") from None


class Engine:
    def __init__(self, backend, tokenizer: Tokenizer | None, config: dict, chat_template: str | None,
                 manifest: Manifest | None = None):
        self.backend, self.tokenizer, self.config, self.manifest = backend, tokenizer, config, manifest
        self.chat_template = chat_template
        eos = config.get("eos_token_id")
        self.eos_token_ids = [] if eos is None else list(eos) if isinstance(eos, list) else [eos]
        if tokenizer is not None and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in self.eos_token_ids:
            self.eos_token_ids.append(tokenizer.eos_token_id)

    @property
    def max_seq(self) -> int:
        return self.backend.max_seq

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, backend: str = "auto", device: str = "cpu", threads: int | None = None,
             max_seq: int = 4096, kernels: str = "reference", verify: bool = False) -> "Engine":
        """An engine directory (from `llamaport export`), or with backend="eager" also any checkpoint.

        The engine directory is validated first (manifest schema and version, every file present with its
        recorded size, the graph's declared shapes against the manifest); `verify=True` also checks every file's
        sha256, which reads the whole engine once.
        """
        path = Path(path)
        kind = enginedir.parse(BackendName, backend, "backend")
        validate.choice("device", device, DEVICES)
        if threads is not None:
            validate.integer("threads", threads, 1)
        validate.integer("max_seq", max_seq, 1)
        if not path.exists():
            raise LlamaportError(f"{path}: no such engine directory")
        # model.onnx without manifest.json is a damaged engine directory, not a checkpoint to load eagerly
        is_engine = (path / MANIFEST).exists() or (path / enginedir.GRAPH).exists()
        if kind is BackendName.EAGER or (kind is BackendName.AUTO and not is_engine):
            return cls._open_eager(path, max_seq, device, kernels)
        from llamaport.plugins.kernels import Kernels  # the enum alone: no torch

        if Kernels.parse(kernels) is not Kernels.REFERENCE:  # the Triton kernels replace eager attention only
            raise LlamaportError(f"--kernels {kernels} needs --backend eager (the {backend} backend runs its own graph)")
        manifest = enginedir.open_engine_dir(path, verify=verify)
        if manifest.task is not Task.CAUSAL_LM:
            raise LlamaportError(f"{path} holds a {manifest.task} model; Engine runs causal-lm engines")
        runner = open_backend(path, manifest, kind, device, threads)
        return cls(runner, _open_tokenizer(path), manifest.config, load_template(path), manifest)

    @classmethod
    def _open_eager(cls, path: Path, max_seq: int, device: str = "cpu", kernels: str = "reference") -> "Engine":
        from llamaport.models import load_model, read_checkpoint

        from .backends.eager_backend import EagerBackend

        if (path / MANIFEST).exists():  # an engine directory: its reference is the export's source
            manifest = enginedir.read_manifest(path)
            source = manifest.source
            if not source or not Path(source).exists():
                raise LlamaportError(f"{path}: the eager backend needs the original checkpoint; pass its path")
            path, max_seq = Path(source), manifest.max_seq
        checkpoint = read_checkpoint(path)
        model = load_model(path)
        files = checkpoint.tokenizer_files
        tokenizer = Tokenizer.from_files(files) if ("tokenizer.json" in files or "tokenizer.model" in files) else None
        template = files.get("chat_template.jinja", b"").decode() or None
        if template is None and "tokenizer_config.json" in files:
            template = json.loads(files["tokenizer_config.json"]).get("chat_template")
        max_seq = min(max_seq, checkpoint.config.max_supported_positions())
        backend = EagerBackend(model, max_seq, device=device, kernels=kernels)  # kernels: plugins.kernels.Kernels
        return cls(backend, tokenizer, checkpoint.config.to_hf_dict(), template)

    # ------------------------------------------------------------------ prompts
    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise LlamaportError("this engine has no tokenizer files (tokenizer.json or tokenizer.model); pass token "
                                 "ids instead of text (CLI: --prompt-ids 1,2,3)")
        return self.tokenizer

    @property
    def vocab_size(self) -> int | None:
        return self.config.get("vocab_size")

    def encode(self, prompt: str | Sequence[int], truncate: bool = False, max_new_tokens: int = 1) -> list[int]:
        """Token ids of a text (or checked ids); with truncate, the end of the prompt that leaves room for
        max_new_tokens in the cache."""
        if isinstance(prompt, str):
            ids = self._require_tokenizer().encode(prompt)
        else:
            ids = validate.token_ids(prompt, self.vocab_size)
        return self._truncate(ids, max_new_tokens)[0] if truncate else ids

    def _truncate(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], int]:
        """(the end of ids that leaves max_new_tokens of cache, how many tokens were dropped from the front)."""
        room = self.max_seq - max_new_tokens
        if len(ids) <= room:
            return ids, 0
        if room < 1:
            raise LlamaportError(
                f"cannot truncate the prompt to leave room for {max_new_tokens} new tokens: the engine's max_seq is "
                f"{self.max_seq}; ask for at most {self.max_seq - 1} new tokens"
            )
        return ids[-room:], len(ids) - room

    def prompt_ids(self, prompt, params: SamplingParams | None = None, chat: bool = False,
                   truncate: bool = False) -> tuple[list[int], int]:
        """(token ids for one prompt, prompt tokens dropped by truncation): what generate and stream run.

        With chat, truncation shortens the user's message from its start, so the template around it survives.
        """
        max_new = _sampling_params(params).max_new_tokens
        if not chat:
            ids = self.encode(prompt, max_new_tokens=max_new)
            return self._truncate(ids, max_new) if truncate else (ids, 0)
        if not isinstance(prompt, str):
            raise LlamaportError("chat=True needs the prompt as text (the chat template is text)")
        ids = self.apply_chat_template([{"role": "user", "content": prompt}])
        if not truncate or len(ids) <= self.max_seq - max_new:
            return ids, 0
        return self._truncate_chat_message(prompt, ids, max_new)

    def _truncate_chat_message(self, content: str, ids: list[int], max_new: int) -> tuple[list[int], int]:
        room = self.max_seq - max_new
        tokenizer = self._require_tokenizer()
        content_ids = tokenizer.encode(content, add_special_tokens=False)
        keep = len(content_ids) - (len(ids) - room)
        for _ in range(4):  # re-tokenizing the cut text may shift a token or two at the seam: shrink and retry
            if keep < 1:
                raise LlamaportError(
                    f"the chat template alone takes {len(ids) - len(content_ids)} of the engine's {self.max_seq} "
                    f"tokens, leaving no room for the message and {max_new} new tokens; ask for fewer new tokens"
                )
            ids = self.apply_chat_template([{"role": "user", "content": tokenizer.decode(content_ids[-keep:])}])
            if len(ids) <= room:
                return ids, len(content_ids) - keep
            keep -= len(ids) - room
        raise LlamaportError("could not shorten the chat message to fit the engine's max_seq; shorten it")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        tokenizer = self._require_tokenizer()
        template = self.chat_template
        if template is None:
            if tokenizer.kind != "sentencepiece":
                raise LlamaportError("this model has no chat template; use generate with a plain prompt")
            template = LLAMA2_CHAT_TEMPLATE
        text = render(template, messages, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
                      add_generation_prompt=add_generation_prompt)
        # The template writes BOS itself when the model wants one, as transformers assumes.
        return tokenizer.encode(text, add_special_tokens=False)

    # ------------------------------------------------------------------ generation
    def _run(self, prompts: list[list[int]], params: SamplingParams, on_piece=None) -> list[GenerationResult]:
        results: list[GenerationResult] = []
        # Every id is checked against the vocabulary here, before a backend sees it (tokenizer output included:
        # a tokenizer with more added tokens than the model's embedding would otherwise fail inside the graph).
        for i, p in enumerate(prompts):
            validate.token_ids(p, self.vocab_size, "prompt" if len(prompts) == 1 else f"prompt {i}")
        validate.token_ids(params.stop_token_ids, self.vocab_size, "stop_token_ids")
        batch = max(1, self.backend.max_batch)
        for start in range(0, len(prompts), batch):
            group = prompts[start : start + batch]
            gen = Generation(self.backend, group, params, self.eos_token_ids)
            decoders = [self.tokenizer.stream() for _ in group] if self.tokenizer else None
            texts = ["" for _ in group]
            for new in gen:
                for row, token in enumerate(new):
                    if token is None or decoders is None:
                        continue
                    piece = decoders[row].push(token)
                    texts[row] += piece
                    if params.stop and piece and self._hit_stop(texts, row, params.stop, len(piece)):
                        gen.finish(row, "stop")
                        piece = ""
                    if on_piece and piece:
                        on_piece(start + row, piece)
            timings = gen.timings.as_dict()
            for row, state in enumerate(gen.rows):
                text = None
                if decoders is not None:
                    tail = "" if state.finish_reason == "stop" and params.stop else decoders[row].flush()
                    if on_piece and tail:
                        on_piece(start + row, tail)
                    text = texts[row] + tail
                results.append(GenerationResult(text, state.tokens, state.finish_reason or "length", state.prompt, timings))
        return results

    @staticmethod
    def _hit_stop(texts: list[str], row: int, stops: list[str], new_chars: int) -> bool:
        """Cut row's text at the first stop string; only the tail the new piece could complete is searched."""
        for stop in stops:
            index = texts[row].find(stop, max(0, len(texts[row]) - new_chars - len(stop) + 1))
            if index >= 0:
                texts[row] = texts[row][:index]
                return True
        return False

    def generate(self, prompt, params: SamplingParams | None = None, chat: bool = False, truncate: bool = False):
        """Text (or token ids) in, `GenerationResult` out. A list of prompts gives a list of results."""
        params = _sampling_params(params)
        batched = isinstance(prompt, (list, tuple)) and len(prompt) > 0 and isinstance(prompt[0], (str, list, tuple, np.ndarray))
        prompts = prompt if batched else [prompt]
        if batched:  # name the row of a bad id
            for i, p in enumerate(prompts):
                if not isinstance(p, str):
                    validate.token_ids(p, self.vocab_size, f"prompt {i}")
        fitted = [self.prompt_ids(p, params, chat, truncate) for p in prompts]
        results = self._run([ids for ids, _ in fitted], params)
        for result, (_, dropped) in zip(results, fitted):
            result.truncated_tokens = dropped
        return results if batched else results[0]

    def stream(self, prompt, params: SamplingParams | None = None, chat: bool = False,
               truncate: bool = False) -> Iterator[str]:
        """Text pieces as they are decoded (never a broken UTF-8 character); they join to the full text."""
        import queue
        import threading

        params = _sampling_params(params)
        ids, _ = self.prompt_ids(prompt, params, chat, truncate)
        pieces: queue.Queue = queue.Queue()
        failure: list[BaseException] = []
        cancelled = threading.Event()

        def emit(_row: int, piece: str) -> None:
            if cancelled.is_set():  # the consumer stopped iterating: stop generating too
                raise _Cancelled
            pieces.put(piece)

        def work():
            try:
                self._run([ids], params, on_piece=emit)
            except _Cancelled:
                pass
            except BaseException as e:  # re-raised in the caller's thread
                failure.append(e)
            finally:
                pieces.put(None)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (piece := pieces.get()) is not None:
                yield piece
        finally:
            cancelled.set()
            thread.join()
        if failure:
            raise failure[0]

    def chat(self, messages: list[dict], params: SamplingParams | None = None) -> GenerationResult:
        return self._run([self.apply_chat_template(messages)], _sampling_params(params))[0]

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Per-position logits (S, V) for one sequence: position i predicts token i + 1."""
        ids = validate.token_ids(token_ids, self.vocab_size)
        if not ids or len(ids) > self.max_seq:
            raise LlamaportError(f"logits needs 1 to {self.max_seq} tokens, got {len(ids)}")
        backend = self.backend
        backend.reset(1)
        if getattr(backend, "all_logits", False) or backend.name == "eager":
            arr = np.array([ids], np.int64)
            return backend.forward(arr, np.zeros(1, np.int64), np.array([len(ids)]), all_positions=True)[0].copy()
        # A last-token engine: the prompt's first token, then one decode step per token.
        rows = []
        for i, token in enumerate(ids):
            rows.append(backend.forward(np.array([[token]], np.int64), np.array([i]), np.ones(1, np.int64))[0].copy())
        return np.stack(rows)
