"""The interactive loop behind `llamaport chat`: streaming replies, a conversation kept within the cache."""

from __future__ import annotations

import sys

import click

from .engine import Engine
from .sampling import SamplingParams


def fit_conversation(engine: Engine, messages: list[dict], reserve: int) -> list[dict]:
    """Drop the oldest turns (keeping a system prompt) until the prompt leaves `reserve` tokens of cache."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    while len(turns) > 1 and len(engine.apply_chat_template(system + turns)) > engine.max_seq - reserve:
        turns = turns[2:] if len(turns) > 2 else turns[-1:]
    return system + turns


def chat_loop(engine: Engine, params: SamplingParams, system: str | None = None) -> None:
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    click.echo("Type a message; /reset starts over; Ctrl-D or Ctrl-C quits.", err=True)
    while True:
        try:
            user = click.prompt(">", prompt_suffix=" ", default="", show_default=False)
        except (EOFError, KeyboardInterrupt, click.exceptions.Abort):
            click.echo("", err=True)
            return
        if user.strip() == "/reset":
            messages = messages[:1] if system else []
            continue
        if not user.strip():
            continue
        messages = fit_conversation(engine, messages + [{"role": "user", "content": user}], params.max_new_tokens)
        reply = []
        try:
            ids = engine.apply_chat_template(messages)
            for piece in engine.stream(ids, params):
                reply.append(piece)
                click.echo(piece, nl=False)
                sys.stdout.flush()
        except KeyboardInterrupt:
            click.echo("", err=True)
            return
        click.echo()
        messages.append({"role": "assistant", "content": "".join(reply)})
