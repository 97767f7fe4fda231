"""Step functions the corpus's definitions name (importable by a worker)."""

from __future__ import annotations

from microsaga import Message


async def echo(msg: Message) -> Message:
    return msg


def not_a_step_function() -> None:  # takes no message: a call fails at run time
    return None


NOT_CALLABLE = 42
