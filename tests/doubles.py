"""Hand-driven providers for deterministic session tests.

The real providers are tested against a real HTTP server; these let a test
decide exactly when each delta and each audio file arrives.
"""

from __future__ import annotations

import base64
from typing import Callable, Sequence

from twisted.internet.defer import Deferred

from livetx.providers.base import Message, Voices


class ScriptedStream:
    """One ``stream`` call, fed by the test."""

    def __init__(self, messages: Sequence[Message], on_delta: Callable[[str], None]) -> None:
        self.messages = list(messages)
        self.on_delta = on_delta
        self.cancelled = False
        self.done: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[None]) -> None:
        self.cancelled = True

    def say(self, *deltas: str) -> None:
        for delta in deltas:
            self.on_delta(delta)

    def finish(self) -> None:
        self.done.callback(None)


class ScriptedLLM:
    model = "scripted-model"

    def __init__(self) -> None:
        self.calls: list[ScriptedStream] = []

    def stream(self, messages: Sequence[Message], on_delta: Callable[[str], None]) -> Deferred[None]:
        call = ScriptedStream(messages, on_delta)
        self.calls.append(call)
        return call.done

    @property
    def last(self) -> ScriptedStream:
        return self.calls[-1]


class ManualTTS:
    """Each sentence's synthesis waits until the test calls ``finish(i)``."""

    name = "manual_tts"

    def __init__(self) -> None:
        self.requests: list[tuple[str, Deferred[bytes]]] = []
        self.cancelled: list[str] = []
        #: The voice each request asked for, in order (None: the default).
        self.asked: list[str | None] = []
        #: How often the voices were asked for (eSpeak NG loads to answer).
        self.listed = 0

    def synthesize(self, text: str, voice: str | None = None) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred(lambda _: self.cancelled.append(text))
        self.requests.append((text, d))
        self.asked.append(voice)
        return d

    def voices(self) -> Voices:
        self.listed += 1
        return Voices(("low", "high"), "low", ("slow",))

    def finish(self, index: int) -> bytes:
        text, d = self.requests[index]
        audio = b"RIFF" + text.encode()
        d.callback(audio)
        return audio


class ManualSTT:
    name = "manual_stt"

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, Deferred[str]]] = []

    def transcribe(self, wav: bytes) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.requests.append((wav, d))
        return d


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
