"""The offline default model: it streams the user's own words back.

It exists so a fresh install can hold a conversation with no account and no
download, and so the whole pipeline (deltas, sentences, TTS, barge-in) can be
watched working before a real model is configured. Tools too: offered the
``clock`` tool (``[tools] enabled = ["clock"]``), it calls it when asked the
time or the date, and says the result, so a tool call can be seen on the
socket with no model account.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Callable, Sequence

import orjson
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from livetx.providers.base import Message, ToolCall, message_text

_WORDS = re.compile(r"\S+\s*")
#: A question the ``clock`` tool answers.
_ASKS_TIME = re.compile(r"\b(time|date|day is it|what day|o'clock)\b", re.IGNORECASE)


class EchoChat:
    """Replies with the last user message, one word per delta."""

    model = "echo"

    def __init__(self, clock: IReactorTime, delay: float = 0.0) -> None:
        self._clock = clock
        self._delay = delay
        self._calls = itertools.count(1)

    def stream(
        self, messages: Sequence[Message], on_delta: Callable[[str], None]
    ) -> Deferred[None]:
        last = next((message_text(m["content"]) for m in reversed(messages) if m["role"] == "user"), "")
        words = _WORDS.findall(last) or ["…"]
        call: IDelayedCall | None = None

        def cancel(d: Deferred[None]) -> None:
            if call is not None and call.active():
                call.cancel()

        done: Deferred[None] = Deferred(cancel)

        def step(i: int) -> None:
            nonlocal call
            call = None
            on_delta(words[i])
            if i + 1 < len(words):
                call = self._clock.callLater(self._delay, step, i + 1)
            else:
                done.callback(None)

        call = self._clock.callLater(self._delay, step, 0)
        return done

    def stream_tools(
        self, messages: Sequence[Message], on_delta: Callable[[str], None],
        tools: Sequence[dict[str, Any]] | None,
    ) -> Deferred[list[ToolCall]]:
        """Call ``clock`` when asked the time and it is offered; say a tool's result; else echo."""
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "tool":  # the result of its own call
            said = self.stream([{"role": "user", "content": _spoken(message_text(last["content"]))}], on_delta)
            return said.addCallback(lambda _: [])
        offered = {tool["function"]["name"] for tool in tools or ()}
        if "clock" in offered and last is not None and last["role"] == "user" \
                and _ASKS_TIME.search(message_text(last["content"])):
            return succeed([ToolCall(f"call_echo_{next(self._calls)}", "clock", "{}")])
        return self.stream(messages, on_delta).addCallback(lambda _: [])


def _spoken(result: str) -> str:
    """A tool's result as a sentence: the clock's fields in words, anything else as it came."""
    try:
        value = orjson.loads(result)
    except orjson.JSONDecodeError:
        return result
    if isinstance(value, dict) and {"time", "weekday", "date", "timezone"} <= value.keys():
        return f"It is {value['time']} on {value['weekday']} {value['date']} ({value['timezone']})."
    return result
