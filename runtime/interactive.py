"""The interactive loop behind `llamaport chat`: streaming replies, a conversation kept within the cache."""

from __future__ import annotations

import sys

import click

from llamaport.errors import LlamaportError

from . import validate
from .engine import Engine
from .generate import PromptTooLong
from .sampling import SamplingParams


def fit_conversation(engine: Engine, messages: list[dict], reserve: int) -> tuple[list[dict], list[int]]:
    """Drop the oldest turns (keeping a system prompt) until the prompt leaves `reserve` tokens of cache.

    Returns the kept messages and their prompt ids, so the prompt is not rendered and tokenized again.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    ids = engine.apply_chat_template(system + turns)
    while len(turns) > 1 and len(ids) > engine.max_seq - reserve:
        turns = turns[2:] if len(turns) > 2 else turns[-1:]
        ids = engine.apply_chat_template(system + turns)
    return system + turns, ids


def _too_long_advice(error: PromptTooLong, system: str | None) -> str:
    what = "this message with the system prompt" if system else "this message"
    fix = "shorten the message, or restart with a shorter --system" if system else "shorten the message"
    return (f"{what} is {error.length} tokens, more than the engine's max_seq {error.max_seq}; it was not sent and "
            f"the conversation is kept ({fix})")


def _check_system_prompt(engine: Engine, system: str) -> None:
    """Say at once when --system leaves no room for messages (the session still starts: /reset will not help,
    but the user sees why each message is refused)."""
    ids = engine.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": "Hi"}])
    if len(ids) >= engine.max_seq:
        click.echo(f"warning: the system prompt takes {len(ids)} of the engine's {engine.max_seq} tokens, so no "
                   "message fits; restart with a shorter --system", err=True)


def chat_loop(engine: Engine, params: SamplingParams, system: str | None = None) -> None:
    if sys.stdin is None or sys.stdin.closed:
        raise LlamaportError("chat reads messages from standard input, which is closed; run it in a terminal or "
                             "pipe the messages in")
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    engine._require_tokenizer()  # fail before the prompt, not after the first message
    if system:
        _check_system_prompt(engine, system)
    click.echo("Type a message; /reset starts over; Ctrl-D or Ctrl-C quits.", err=True)
    while True:
        try:
            user = click.prompt(">", prompt_suffix=" ", default="", show_default=False)
        except (EOFError, KeyboardInterrupt, click.exceptions.Abort):
            click.echo("", err=True)
            return
        except UnicodeDecodeError:
            click.echo("error: that message was not valid UTF-8 text; it was not sent and the conversation is kept",
                       err=True)
            continue
        except (OSError, RuntimeError, ValueError):  # stdin closed or lost while we waited on it
            click.echo("", err=True)
            return
        if user.strip() == "/reset":
            messages = messages[:1] if system else []
            continue
        if not user.strip():
            continue
        reply = []
        try:
            validate.text("this message", user)  # bytes that were not UTF-8 arrive as lone surrogates
            # Assigned only once the reply is complete: a refused message leaves the conversation as it was.
            kept, ids = fit_conversation(engine, messages + [{"role": "user", "content": user}], params.max_new_tokens)
            for piece in engine.stream(ids, params):
                reply.append(piece)
                click.echo(piece, nl=False)
                sys.stdout.flush()
        except KeyboardInterrupt:
            click.echo("", err=True)
            return
        except PromptTooLong as e:
            click.echo(f"error: {_too_long_advice(e, system)}", err=True)
            continue
        except LlamaportError as e:
            click.echo(f"{chr(10) if reply else ''}error: {e}; the conversation is kept", err=True)
            continue
        click.echo()
        messages = kept + [{"role": "assistant", "content": "".join(reply)}]
