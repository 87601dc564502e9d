"""Write any checkpoint the loaders read as a Hugging Face folder (config.json, safetensors, tokenizer files)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llamaport.atomic import atomic_output_dir, write_marker
from llamaport.errors import LlamaportError
from .loaders.checkpoint import Checkpoint, materialize

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
MAX_SHARD_BYTES = 4 * 2**30  # shards keep peak memory near one shard, not the whole model, while saving


def parse_dtype(name: str, flag: str = "--dtype") -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise LlamaportError(f"{flag} {name!r} is not a dtype; use one of fp32, fp16, bf16") from None


def _save_shards(model: torch.nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # transformers re-ties it from the config
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_hf_folder(checkpoint: Checkpoint, out: str | Path, dtype: torch.dtype | None = None,
                    overwrite: bool = False) -> Path:
    """Write `checkpoint` to `out` atomically. A vocabulary-only GGUF writes just its tokenizer files.

    A folder with weights also gets llamaport.json, the list of files written, so a later `--overwrite` knows it
    may replace them (a vocabulary-only folder stays exactly the tokenizer files, so it is not replaceable).
    """
    with atomic_output_dir(out, overwrite, sources=[checkpoint.source]) as tmp:
        for name, content in checkpoint.tokenizer_files.items():
            (tmp / name).write_bytes(content)
        if checkpoint.config is not None and checkpoint.tensors is not None:
            dtype = dtype or torch.float32
            model = materialize(checkpoint, dtype)
            dtype_name = str(dtype).removeprefix("torch.")
            config = checkpoint.config.to_hf_dict(dtype=dtype_name)
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            _save_shards(model, tmp)
            generation = {"bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id")}
            if "generation_config.json" not in checkpoint.tokenizer_files:
                (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
            write_marker(tmp)
    return Path(out)
