"""The interactive loop behind `llamaport chat`: streaming replies, a conversation kept within the cache."""

from __future__ import annotations

import sys

import click

from .engine import Engine
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
        messages, ids = fit_conversation(engine, messages + [{"role": "user", "content": user}], params.max_new_tokens)
        reply = []
        try:
            for piece in engine.stream(ids, params):
                reply.append(piece)
                click.echo(piece, nl=False)
                sys.stdout.flush()
        except KeyboardInterrupt:
            click.echo("", err=True)
            return
        click.echo()
        messages.append({"role": "assistant", "content": "".join(reply)})
