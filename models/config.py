"""`LlamaConfig`: the model family's hyper-parameters, read from and written to Hugging Face's `config.json`.

Covers every field of transformers' `LlamaConfig` that changes the computation. Both spellings of the RoPE settings
are read: the older `rope_theta` + `rope_scaling` (transformers 4.x) and the newer `rope_parameters` (5.x).
Unknown or inconsistent values raise `ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamaport.errors import ConfigError

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
# Keys each rope type may carry besides rope_type/rope_theta; anything else is a typo we refuse to guess at.
_ROPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "truncate",
    },
}
_SUPPORTED_ACTS = ("silu", "swish")
# Fields that fix tensor shapes (or which tensors exist) and have a transformers default. A config.json without
# one of them loads with that default, as in transformers; `check_against_shapes` then names the missing field
# when the weights disagree, instead of blaming the weights or another field.
_DEFAULTED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "tie_word_embeddings")


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE frequencies are stretched for long contexts (`rope_type` = linear | dynamic | llama3 | yarn)."""

    rope_type: str
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    attention_factor: float | None = None  # yarn
    beta_fast: float | None = None  # yarn
    beta_slow: float | None = None  # yarn
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool | None = None  # yarn

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> MHA (= num_attention_heads); 1 -> MQA; else GQA
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None  # the original Llama has none
    pretraining_tp: int = 1
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    num_labels: int = 2  # only used by LlamaForSequenceClassification
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # passed through to config.json
    defaulted: tuple[str, ...] = field(default=(), compare=False, repr=False)  # absent from config.json

    def __post_init__(self):
        # Frozen dataclass: fill derived defaults through object.__setattr__.
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None and self.num_attention_heads:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
            "pretraining_tp",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                "num_key_value_heads",
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads}) for grouped-query attention",
            )
        if self.head_dim % 2:
            raise ConfigError("head_dim", f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.hidden_act not in _SUPPORTED_ACTS:
            raise ConfigError("hidden_act", f"Llama uses SwiGLU with 'silu', got {self.hidden_act!r}")
        if not (self.rms_norm_eps > 0):
            raise ConfigError("rms_norm_eps", f"must be > 0, got {self.rms_norm_eps!r}")
        if not (self.rope_theta > 0):
            raise ConfigError("rope_theta", f"must be > 0, got {self.rope_theta!r}")
        tp = self.pretraining_tp
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % tp:
                raise ConfigError("pretraining_tp", f"{name} ({getattr(self, name)}) is not divisible by {tp}")
        if (self.num_key_value_heads * self.head_dim) % tp:
            raise ConfigError("pretraining_tp", f"key/value width is not divisible by {tp}")
        rs = self.rope_scaling
        if rs is not None:
            if rs.rope_type not in ROPE_TYPES:
                raise ConfigError(
                    "rope_scaling.rope_type", f"unknown rope type {rs.rope_type!r}; supported: {', '.join(ROPE_TYPES)}"
                )
            if rs.rope_type != "default" and not (rs.factor and rs.factor > 0):
                raise ConfigError("rope_scaling.factor", f"must be > 0 for rope type {rs.rope_type!r}")
            if rs.rope_type == "llama3":
                for name in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                    if getattr(rs, name) is None:
                        raise ConfigError(f"rope_scaling.{name}", "is required for rope type 'llama3'")
                if rs.high_freq_factor <= rs.low_freq_factor:
                    raise ConfigError("rope_scaling.high_freq_factor", "must be greater than low_freq_factor")

    # ------------------------------------------------------------------ derived
    @property
    def num_query_groups(self) -> int:
        """How many query heads share one key/value head (1 = MHA, num_attention_heads = MQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]

    @property
    def rope_type(self) -> str:
        return self.rope_scaling.rope_type if self.rope_scaling else "default"

    def max_supported_positions(self) -> int:
        """Longest sequence the model handles as configured (rope scaling may extend max_position_embeddings)."""
        rs = self.rope_scaling
        if rs is None or rs.rope_type == "default":
            return self.max_position_embeddings
        if rs.rope_type in ("llama3", "yarn") and rs.original_max_position_embeddings:
            return max(self.max_position_embeddings, int(rs.original_max_position_embeddings * rs.factor))
        return int(math.floor(self.max_position_embeddings * rs.factor))

    def defaulted_note(self) -> str | None:
        """One line naming the fields config.json left out and the transformers defaults used for them."""
        if not self.defaulted:
            return None
        used = ", ".join(f"{name} = {getattr(self, name)}" for name in self.defaulted)
        return f"config.json does not set {', '.join(self.defaulted)}; transformers' defaults are used ({used})"

    def check_against_shapes(self, shapes: dict[str, tuple[int, ...]], source: str = "config.json") -> None:
        """Raise ConfigError naming the field when the weights' shapes (HF name -> shape) contradict the config.

        A field config.json left out is blamed first: its transformers default is the likelier culprit than the
        field whose arithmetic happens to expose it (a missing num_attention_heads shows up in k_proj's rows).
        """
        for fields, mismatch, got, want in self._shape_facts(shapes):
            if got == want:
                continue
            culprit = next((f for f in fields if f in self.defaulted), fields[0])
            default = getattr(self, culprit)
            fix = (f"config.json does not set '{culprit}', so transformers' default {default} was used; add the "
                   "model's real value" if culprit in self.defaulted else f"fix '{culprit}' in config.json")
            raise ConfigError(culprit, f"{source}: {mismatch}; {fix}")

    def _shape_facts(self, shapes: dict) -> list[tuple[tuple[str, ...], str, Any, Any]]:
        """(fields it depends on, most specific first; what; found; expected) for the tensors that pin each size
        field. Tensors the checkpoint lacks are skipped: the loaders report missing tensors themselves."""
        h, hd = self.hidden_size, self.head_dim
        pinned = [
            (("vocab_size", "hidden_size"), "model.embed_tokens.weight", (self.vocab_size, h)),
            (("num_attention_heads", "hidden_size"), "model.layers.0.self_attn.q_proj.weight",
             (self.num_attention_heads * hd, h)),
            (("num_key_value_heads", "num_attention_heads", "hidden_size"), "model.layers.0.self_attn.k_proj.weight",
             (self.num_key_value_heads * hd, h)),
            (("intermediate_size", "hidden_size"), "model.layers.0.mlp.gate_proj.weight", (self.intermediate_size, h)),
        ]
        facts = [(fields, f"tensor '{name}' has shape {tuple(shapes[name])}, but the config implies {want}",
                  tuple(shapes[name]), want) for fields, name, want in pinned if name in shapes]
        layers = {int(n.split(".")[2]) for n in shapes if n.startswith("model.layers.") and n.split(".")[2].isdigit()}
        if layers:
            count = max(layers) + 1
            facts.append((("num_hidden_layers",), f"the weights hold {count} layers, but the config says "
                          f"{self.num_hidden_layers}", count, self.num_hidden_layers))
        if "tie_word_embeddings" in self.defaulted and "model.embed_tokens.weight" in shapes:
            # transformers' default is an untied head: weights without lm_head.weight (or a classifier's score)
            # mean config.json left out "tie_word_embeddings": true
            has_head = "lm_head.weight" in shapes or "score.weight" in shapes
            facts.append((("tie_word_embeddings",), "the weights have no lm_head.weight (a tied output layer), but "
                          "the config expects one", has_head, not self.tie_word_embeddings))
        return facts

    def replace(self, **changes) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LlamaConfig":
        d = dict(d)
        model_type = d.get("model_type")
        if model_type is not None and model_type != "llama":
            raise ConfigError("model_type", f"expected 'llama', got {model_type!r}; only Llama-family models are supported")
        rope_theta, rope_scaling = _read_rope(d)
        kwargs: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)} - {"rope_theta", "rope_scaling", "extra", "num_labels",
                                                              "defaulted"}
        for name in names:
            if name in d and d[name] is not None:
                kwargs[name] = d[name]
        if d.get("pretraining_tp") is None:
            kwargs.pop("pretraining_tp", None)
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if key in d:
                kwargs[key] = d[key]
        if "id2label" in d and d["id2label"]:
            kwargs["num_labels"] = len(d["id2label"])
        elif "num_labels" in d:
            kwargs["num_labels"] = int(d["num_labels"])
        passthrough = {k: d[k] for k in ("chat_template", "torch_dtype", "dtype", "id2label", "label2id") if k in d}
        defaulted = tuple(name for name in _DEFAULTED_FIELDS if d.get(name) is None)
        return cls(rope_theta=float(rope_theta), rope_scaling=rope_scaling, extra=passthrough, defaulted=defaulted,
                   **kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "LlamaConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError("config.json", f"{path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ConfigError("config.json", f"{path} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError("config.json", f"{path} must hold a JSON object")
        return cls.from_dict(data)

    def to_hf_dict(self, dtype: str | None = None) -> dict[str, Any]:
        """A `config.json` that transformers 4.x and 5.x both read (5.x from `rope_parameters`)."""
        d: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
        for f in dataclasses.fields(self):
            if f.name in ("rope_scaling", "extra", "num_labels", "defaulted"):
                continue
            d[f.name] = getattr(self, f.name)
        rope_parameters = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope_parameters.update({k: v for k, v in self.rope_scaling.to_dict().items() if k != "rope_type"})
            d["rope_scaling"] = self.rope_scaling.to_dict() | {"type": self.rope_type}
        d["rope_parameters"] = rope_parameters
        for k, v in self.extra.items():
            if k not in ("torch_dtype", "dtype"):
                d.setdefault(k, v)
        if dtype is not None:
            d["torch_dtype"] = dtype
        return d


def _read_rope(d: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """(rope_theta, rope_scaling) from either spelling; `rope_parameters` wins when both are present."""
    params = d.get("rope_parameters")
    field_name = "rope_parameters"
    if params is None:
        params = d.get("rope_scaling")
        field_name = "rope_scaling"
    theta = d.get("rope_theta")
    if params is None:
        return (theta if theta is not None else 10000.0), None
    if not isinstance(params, dict):
        raise ConfigError(field_name, f"must be an object, got {params!r}")
    params = dict(params)
    theta = params.pop("rope_theta", theta)
    if theta is None:
        theta = 10000.0
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if params.pop("partial_rotary_factor", 1.0) not in (None, 1, 1.0):
        raise ConfigError(f"{field_name}.partial_rotary_factor", "Llama rotates the whole head; only 1.0 is supported")
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"{field_name}.rope_type", f"unknown rope type {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
    unknown = set(params) - _ROPE_KEYS[rope_type]
    if unknown:
        raise ConfigError(f"{field_name}", f"unexpected keys {sorted(unknown)} for rope type {rope_type!r}")
    if rope_type == "default":
        return theta, None
    if rope_type in ("llama3", "yarn") and params.get("original_max_position_embeddings") is None:
        # transformers falls back to max_position_embeddings here; so do we.
        params["original_max_position_embeddings"] = d.get("max_position_embeddings", 2048)
    if rope_type == "yarn" and params.get("factor") is None:
        params["factor"] = d.get("max_position_embeddings", 2048) / params["original_max_position_embeddings"]
    return theta, RopeScaling(rope_type=rope_type, **params)
