"""Semantic end of turn: a finished request ends after a short pause, an unfinished one waits.

With ``end_of_turn: "silence"`` (the default) an utterance ends after
``silence_ms`` of silence, whatever was said. With ``"semantic"`` the end-of-turn
model (:class:`livetx.providers.base.TurnEndModel`, Smart Turn) is asked at
the first short pause whether the speaker sounds done. If it says so, the
utterance ends there; if not, the detector waits on, up to a longest
silence, and asks again at the next pause. ``eagerness`` sets both waits, as
OpenAI's ``semantic_vad`` does: ``high`` answers soonest and cuts slow
speakers off most, ``low`` lets them think longest.

The model's verdict counts only if nothing was said since it was asked.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.live.settings import Settings
from livetx.providers.base import TurnEndModel
from livetx.providers.smart_turn import WINDOW_SAMPLES

_log = Logger()

#: Eagerness → (the pause at which the model is asked, the longest silence
#: that ends a turn it judged unfinished), in ms. The pauses are no shorter
#: than the early decode's (livetx.live.streaming_stt.PAUSE_MS), so the
#: transcript is under way when the turn ends.
EAGERNESS = {"high": (160, 1000), "medium": (200, 2000), "low": (320, 4000)}
#: Above this probability the speaker is done (the model's own cut).
THRESHOLD = 0.5


def detector_settings(settings: Settings) -> Settings:
    """What the voice detector runs on: with the semantic rule, silence ends a turn only at the longest wait."""
    if settings.end_of_turn != "semantic":
        return settings
    return dataclasses.replace(settings, silence_ms=EAGERNESS[settings.eagerness][1])


class TurnEnd:
    """One connection's semantic end of turn: asks the model at each pause."""

    __slots__ = ("_model", "pause_ms")

    def __init__(self, model: TurnEndModel, eagerness: str) -> None:
        self._model = model
        self.pause_ms = EAGERNESS[eagerness][0]

    def ask(self, pcm: bytes, done: Callable[[], None]) -> Deferred[None]:
        """Ask about the utterance ``pcm`` (its last 8 s matter); ``done`` is called if the speaker is done."""

        def judged(probability: float) -> None:
            if probability > THRESHOLD:
                done()

        asked = self._model.complete(bytes(pcm[-2 * WINDOW_SAMPLES:]))
        return asked.addCallbacks(judged, _failed)


def _failed(failure: Failure) -> None:
    """The model could not tell: the longest silence ends the turn, as without it."""
    _log.failure("End-of-turn model failed", failure)
