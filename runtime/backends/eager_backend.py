"""The eager PyTorch model as a backend: the reference every engine is checked against, and a fast CUDA path.

CPU (default): the model as loaded (fp32), reference attention. `kernels="triton"` routes attention through the
Triton kernels; on CPU tensors that is Triton's interpreter (TRITON_INTERPRET=1: slow, for tests).

CUDA (`device="cuda"`): weights in fp16 (or bf16), q/k/v and gate/up projections fused. With `kernels="triton"`
each decode step (one token per row) is captured once per batch size in a CUDA graph and replayed: the static
cache and the kernels' device-side lengths make the step capturable, so a token costs one graph launch. The
reference attention learns the filled length on the host (one sync per step), so it runs uncaptured.
"""

from __future__ import annotations

import os

import numpy as np

from llamaport.errors import LlamaportError
from llamaport.plugins.kernels import Kernels, use_kernels

DTYPES = ("fp32", "fp16", "bf16")


class _DecodeGraph:
    """One captured decode step for a batch size: static inputs copied in, replayed, static logits read out."""

    def __init__(self, torch, step, ids, past, lengths):
        self.inputs = (ids.clone(), past.clone(), lengths.clone())
        # Warm-up on a side stream (Triton compiles, cuBLAS picks its kernels) before capture, as CUDA graphs need.
        # Re-running the step writes the same k/v at the same slots, so the warm-up leaves the cache as it was.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step(*self.inputs)  # (B, 1, V)

    def __call__(self, ids, past, lengths):
        for static, new in zip(self.inputs, (ids, past, lengths)):
            static.copy_(new, non_blocking=True)
        self.graph.replay()
        return self.logits


class EagerBackend:
    name = "eager"

    def __init__(self, model, max_seq: int, max_batch: int = 64, device: str = "cpu",
                 kernels: Kernels | str = Kernels.REFERENCE, dtype: str | None = None, cuda_graphs: bool = True):
        import torch

        self.torch = torch
        self.kernels = Kernels.parse(kernels)
        self.device = torch.device(device)
        if self.kernels is Kernels.TRITON and self.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise LlamaportError("--kernels triton on the CPU runs Triton's interpreter: set TRITON_INTERPRET=1 "
                                 "(slow; meant for tests) or use --device cuda")
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise LlamaportError("--device cuda: this torch build sees no CUDA GPU; install a CUDA build of torch")
            dtype = dtype or "fp16"
            model = model.fuse_projections()
        if dtype is not None:
            if dtype not in DTYPES:
                raise LlamaportError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
            model = model.to(getattr(torch, {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[dtype]))
        self.model = use_kernels(model.to(self.device).eval(), self.kernels)
        self.max_seq, self.max_batch = max_seq, max_batch
        self.vocab_size = model.config.vocab_size
        self.use_graphs = cuda_graphs and self.device.type == "cuda" and self.kernels is Kernels.TRITON
        self._caches: dict[int, list] = {}  # batch -> KV cache; kept so each batch's captured graph stays valid
        self._graphs: dict[int, _DecodeGraph] = {}
        self.batch = None

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (a tied head counted once)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def dtype_size(self) -> int:
        return self.model.model.embed_tokens.weight.element_size()

    def reset(self, batch: int) -> None:
        if batch > self.max_batch:
            raise LlamaportError(f"batch {batch} exceeds max_batch {self.max_batch}")
        if batch != self.batch:
            if self.device.type == "cpu":  # one cache at a time on the CPU (its old behaviour)
                self._caches.clear()
            if batch not in self._caches:
                self._caches[batch] = self.model.new_cache(batch, self.max_seq, device=self.device)
            self.cache = self._caches[batch]
            self.batch = batch

    def _step(self, ids, past, lengths, all_positions: bool = False):
        logits, self.cache = self.model(ids, past, self.cache, last_only=not all_positions, input_lengths=lengths)
        return logits

    def forward(self, input_ids, past_lengths, input_lengths, all_positions: bool = False) -> np.ndarray:
        torch = self.torch

        def tensor(x):
            return torch.from_numpy(np.asarray(x, np.int64)).to(self.device)

        ids, past, lengths = tensor(input_ids), tensor(past_lengths), tensor(input_lengths)
        with torch.inference_mode():
            if self.use_graphs and ids.shape[1] == 1 and not all_positions:
                graph = self._graphs.get(self.batch)
                if graph is None:
                    graph = self._graphs[self.batch] = _DecodeGraph(torch, self._step, ids, past, lengths)
                logits = graph(ids, past, lengths)
            else:
                logits = self._step(ids, past, lengths, all_positions)
        logits = logits.float().cpu().numpy()
        return logits if all_positions else logits[:, -1]
