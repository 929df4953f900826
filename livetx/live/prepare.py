"""A turn's way to the model: its number, its transcript, ``user_msg``, the stored history.

:class:`livetx.live.session.LiveSession` says which turn begins (its state
machine); this takes the turn from its input to the moment the model may
start, then hands it to the :class:`~livetx.live.request.Request`:

- the turn is numbered and reported (:class:`~livetx.live.ledger.TurnLedger`);
- a voice turn's audio is kept (``keep_audio``) and transcribed, reusing the
  decode of its last pause (:mod:`livetx.live.streaming_stt`); an empty
  transcript ends the turn with ``no_speech``, a failed one with an error;
- the user's words go out as ``user_msg``;
- the first turn after connecting waits for the stored history.

What is awaited is the request's ``preparing``, which an interrupt cancels.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.deferreds import waiter_for
from livetx.domain import Engines
from livetx.errors import ErrorCode
from livetx.live import frames
from livetx.live.capture import Segment
from livetx.live.events import Outcome
from livetx.live.history import Conversation
from livetx.live.ledger import TurnLedger
from livetx.live.request import Request
from livetx.live.turn import report_failure

_log = Logger()


class Preparation:
    """Gets each turn of a session ready for the model, one at a time."""

    __slots__ = ("_clock", "_engines", "_username", "_turns", "_conversation", "_request")

    def __init__(
        self, clock: IReactorTime, engines: Engines, username: str, turns: TurnLedger, conversation: Conversation,
        request: Request,
    ) -> None:
        self._clock = clock
        self._engines = engines
        self._username = username
        self._turns = turns
        self._conversation = conversation
        self._request = request

    def text(self, text: str, started: float) -> None:
        """A typed request (``text_input``)."""
        self._request.segment = None  # speech over a typed request is a barge-in, always
        self._turns.begin("text", started)
        self._said(text, started)

    def voice(self, segment: Segment, began: float) -> None:
        """A spoken request: ``segment`` is its audio, whose capture began at ``began``."""
        wav = segment.wav()
        assembled = self._clock.seconds()
        if self._engines.keep_audio is not None:
            self._engines.keep_audio(self._username, wav)
        turns = self._turns
        turns.begin("audio", assembled, assembled - began)
        if segment.voiced_at is not None and segment.stopped_at is not None:
            turns.report.speech_ended(assembled - segment.voiced_at, assembled - segment.stopped_at)
        self._request.segment = segment
        stt = self._engines.stt
        if stt is None:
            turns.error(ErrorCode.STT_UNAVAILABLE, "speech-to-text is not configured")
            self._request.end_without_reply(Outcome.FAILED)
            return
        turns.report.provider_called("stt", stt.name)
        # A call that raises takes the failure path too: error, ``end``, idle again.
        self._request.preparing = segment.transcript(stt, wav)
        self._request.preparing.addCallbacks(self._transcribed, self._stt_failed, callbackArgs=(assembled, stt.name))

    def _transcribed(self, text: str, assembled: float, stt: str) -> None:
        self._request.preparing = None
        self._turns.report.provider_timing("stt", stt, None, self._clock.seconds() - assembled)
        text = text.strip()
        if not text:
            self._turns.emit(frames.no_speech(frames.timestamp(self._clock.seconds())))
            self._request.end_without_reply(Outcome.OK)
        else:
            self._said(text, assembled)

    def _stt_failed(self, failure: Failure) -> None:
        self._request.preparing = None
        if failure.check(CancelledError):
            return  # interrupted or closed: the cancellation is ours
        _log.failure("Speech-to-text failed", failure)
        self._turns.emit(frames.error(*report_failure(failure, ErrorCode.INTERNAL_ERROR, self._turns.report)))
        self._request.end_without_reply(Outcome.FAILED)

    def _said(self, text: str, started: float) -> None:
        """The user's words are known: show them, then start the reply once the history is in."""
        now = self._clock.seconds()
        self._turns.emit({"t": "user_msg", "data": {"text": text, "ts": frames.timestamp(now)}})
        self._turns.report.transcribed(now - started)
        loading = self._conversation.loading
        if loading is None:
            self._request.start(text, started)
            return
        # The stored history is still loading (first turn after connecting).
        waiter = waiter_for(loading)
        waiter.addCallbacks(lambda _: self._request.start(text, started), _cancelled)
        self._request.preparing = waiter


def _cancelled(failure: Failure) -> None:
    failure.trap(CancelledError)
