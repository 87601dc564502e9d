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

from llamaport.errors import LlamaportError

from .chat import LLAMA2_CHAT_TEMPLATE, load_template, render
from .generate import Generation
from .sampling import SamplingParams
from .tokenizer import Tokenizer

SUPPORTED_FORMAT_VERSION = 1
BACKENDS = ("auto", "onnxruntime", "tensorrt", "eager")


@dataclass
class GenerationResult:
    text: str | None
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    prompt_token_ids: list[int] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


class _Cancelled(Exception):
    """Raised inside a streaming generation when its consumer has gone away."""


def read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.exists():
        raise LlamaportError(f"{folder} is not an engine directory (no manifest.json); create one with 'llamaport export'")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != "llamaport-engine":
        raise LlamaportError(f"{path} is not a llamaport engine manifest")
    if manifest.get("format_version", 0) > SUPPORTED_FORMAT_VERSION:
        raise LlamaportError(f"{path} has format_version {manifest['format_version']}; upgrade llamaport to run it")
    if manifest.get("task") != "causal-lm":
        raise LlamaportError(f"{folder} holds a {manifest.get('task')} model; Engine runs causal-lm engines")
    return manifest


class Engine:
    def __init__(self, backend, tokenizer: Tokenizer | None, config: dict, chat_template: str | None,
                 manifest: dict | None = None):
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
             max_seq: int = 4096) -> "Engine":
        """An engine directory (from `llamaport export`), or with backend="eager" also any checkpoint."""
        path = Path(path)
        if backend not in BACKENDS:
            raise LlamaportError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if not path.exists():
            raise LlamaportError(f"{path}: no such engine directory")
        is_engine = (path / "manifest.json").exists()
        if backend == "eager" or (backend == "auto" and not is_engine):
            return cls._open_eager(path, max_seq)
        manifest = read_manifest(path)
        if backend == "auto":
            backend = "tensorrt" if manifest["target"] == "trt" else "onnxruntime"
        if backend == "tensorrt":
            from .backends.tensorrt_backend import TensorRTBackend

            runner = TensorRTBackend(path, manifest)
        else:
            from .backends.onnxruntime_backend import OnnxRuntimeBackend

            runner = OnnxRuntimeBackend(path, manifest, device, threads)
        has_tokenizer = (path / "tokenizer.json").exists() or (path / "tokenizer.model").exists()
        tokenizer = Tokenizer.from_dir(path) if has_tokenizer else None
        return cls(runner, tokenizer, manifest["config"], load_template(path), manifest)

    @classmethod
    def _open_eager(cls, path: Path, max_seq: int) -> "Engine":
        from llamaport.models import load_model, read_checkpoint

        from .backends.eager_backend import EagerBackend

        if (path / "manifest.json").exists():  # an engine directory: its reference is the export's source
            manifest = json.loads((path / "manifest.json").read_text())
            source = manifest.get("source")
            if not source or not Path(source).exists():
                raise LlamaportError(f"{path}: the eager backend needs the original checkpoint; pass its path")
            path, max_seq = Path(source), manifest["max_seq"]
        checkpoint = read_checkpoint(path)
        model = load_model(path)
        files = checkpoint.tokenizer_files
        tokenizer = Tokenizer.from_files(files) if ("tokenizer.json" in files or "tokenizer.model" in files) else None
        template = files.get("chat_template.jinja", b"").decode() or None
        if template is None and "tokenizer_config.json" in files:
            template = json.loads(files["tokenizer_config.json"]).get("chat_template")
        max_seq = min(max_seq, checkpoint.config.max_supported_positions())
        return cls(EagerBackend(model, max_seq), tokenizer, checkpoint.config.to_hf_dict(), template)

    # ------------------------------------------------------------------ prompts
    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise LlamaportError("this engine has no tokenizer files; pass token ids instead of text")
        return self.tokenizer

    def encode(self, prompt: str | Sequence[int], truncate: bool = False) -> list[int]:
        ids = list(prompt) if not isinstance(prompt, str) else self._require_tokenizer().encode(prompt)
        if truncate and len(ids) > self.max_seq - 1:
            ids = ids[-(self.max_seq - 1) :]  # keep the end of the prompt, leave room for one new token
        return ids

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
        params = params or SamplingParams()
        batched = isinstance(prompt, (list, tuple)) and len(prompt) > 0 and isinstance(prompt[0], (str, list, tuple, np.ndarray))
        prompts = prompt if batched else [prompt]
        if chat:
            ids = [self.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
        else:
            ids = [self.encode(p, truncate) for p in prompts]
        results = self._run(ids, params)
        return results if batched else results[0]

    def stream(self, prompt, params: SamplingParams | None = None, chat: bool = False,
               truncate: bool = False) -> Iterator[str]:
        """Text pieces as they are decoded (never a broken UTF-8 character); they join to the full text."""
        import queue
        import threading

        ids = self.apply_chat_template([{"role": "user", "content": prompt}]) if chat else self.encode(prompt, truncate)
        pieces: queue.Queue = queue.Queue()
        failure: list[BaseException] = []
        cancelled = threading.Event()

        def emit(_row: int, piece: str) -> None:
            if cancelled.is_set():  # the consumer stopped iterating: stop generating too
                raise _Cancelled
            pieces.put(piece)

        def work():
            try:
                self._run([ids], params or SamplingParams(), on_piece=emit)
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
        return self._run([self.apply_chat_template(messages)], params or SamplingParams())[0]

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Per-position logits (S, V) for one sequence: position i predicts token i + 1."""
        ids = list(token_ids)
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
