"""The offline default model: it streams the user's own words back.

It exists so a fresh install can hold a conversation with no account and no
download, and so the whole pipeline (deltas, sentences, TTS, barge-in) can be
watched working before a real model is configured.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from livetx.providers.base import Message, message_text

_WORDS = re.compile(r"\S+\s*")


class EchoChat:
    """Replies with the last user message, one word per delta."""

    model = "echo"

    def __init__(self, clock: IReactorTime, delay: float = 0.0) -> None:
        self._clock = clock
        self._delay = delay

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
