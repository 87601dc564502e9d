"""Chat templates rendered with jinja2 the way transformers' `apply_chat_template` does.

The model's own template comes from chat_template.jinja or tokenizer_config.json. A Llama 2 chat model that ships
none gets the built-in `[INST]`/`<<SYS>>` format below (Meta's reference format).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from llamaport.errors import LlamaportError

from . import validate

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] | trim + '\\n<</SYS>>\\n\\n' %}"
    "{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


# Roles Llama-family chat templates know; anything else ("wizard") would be rendered as nonsense or dropped.
CHAT_ROLES = ("system", "user", "assistant", "tool", "ipython")


def load_template(folder: Path) -> str | None:
    """The model's chat template, or None when it has none."""
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.exists():
        return jinja_file.read_text()
    config_file = folder / "tokenizer_config.json"
    if config_file.exists():
        template = json.loads(config_file.read_text()).get("chat_template")
        if isinstance(template, list):  # named templates: transformers picks "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        return template
    return None


def _raise(message: str):
    raise LlamaportError(f"chat template: {message}")


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent, ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render(template: str, messages: list[dict], *, bos_token: str | None, eos_token: str | None,
           add_generation_prompt: bool = True) -> str:
    if isinstance(messages, (str, dict)) or not messages:
        raise LlamaportError("chat messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise LlamaportError(f"chat messages must be {{'role': ..., 'content': ...}} dicts, got {m!r}")
        if m["role"] not in CHAT_ROLES:
            raise LlamaportError(f"chat message {i} has role {m['role']!r}; use one of {', '.join(CHAT_ROLES)}")
        if not isinstance(m["content"], str):
            raise LlamaportError(f"chat message {i}: content must be text, got {type(m['content']).__name__}")
        validate.text(f"chat message {i}", m["content"])
    from jinja2 import TemplateError

    try:
        return _compile(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token or "",
            eos_token=eos_token or "",
        )
    except TemplateError as e:  # a broken template file, or one that needs variables we do not pass
        raise LlamaportError(f"chat template failed ({type(e).__name__}: {e}); check chat_template.jinja or "
                             "tokenizer_config.json's chat_template") from None
