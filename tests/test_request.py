"""The request in progress and its preparation (live/request.py, live/prepare.py), on a Clock:
how a request ends when the connection or the server ends it, and the errors it reports."""

from __future__ import annotations

from typing import Any, Mapping

from livetx.errors import ErrorCode
from livetx.live.events import Ignore, Outcome

from .test_session import Harness
from .test_talk import quiet, voiced
from .test_turn_taking import kinds, speak, talking


class Told(Ignore):
    """What a session's listener is told: each turn's outcome, and each error frame sent."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.errors: list[str] = []

    def turn_ended(self, outcome: Outcome, seconds: float, values: Mapping[str, Any]) -> None:
        self.outcomes.append(outcome)

    def error_sent(self, code: str) -> None:
        self.errors.append(code)


def told(**options: Any) -> tuple[Harness, Told]:
    listener = Told()
    return Harness(listener=lambda clock: listener, **options), listener


def test_a_reply_cut_by_the_connection_closing_is_stored_and_reported_dropped() -> None:
    h, listener = told(tts=False)
    h.send("text_input", text="tell me a story")
    h.llm.last.say("Once upon a time")
    over = h.session.turn_over()
    h.session.close()
    assert over.called and h.llm.last.cancelled
    assert listener.outcomes == [Outcome.DROPPED] and listener.errors == []  # not a barge-in, and no refusal
    [kept] = h.session.history
    assert (kept.user, kept.reply, kept.interrupted) == ("tell me a story", "Once upon a time", True)


def test_speech_over_an_unheard_reply_is_a_barge_in_once_the_server_stops() -> None:
    listener = Told()
    h = talking(listener=lambda clock: listener)
    speak(h, voiced(900))
    h.session.stop()  # while the user still speaks: no turn to stop yet
    speak(h, quiet(900))
    h.stt.requests[0][1].callback("please call my sister at")
    h.llm.last.say("Calling your sister")
    assert h.state == "processing"
    produced = speak(h, voiced(600))  # unheard, and within continue_ms: it would continue the request
    assert kinds(produced) == ["speech_started", "stop_play"] and h.llm.last.cancelled
    assert listener.outcomes == [Outcome.DROPPED]


def test_a_voice_turn_without_speech_to_text_reports_its_error_and_fails() -> None:
    h, listener = told(stt=False)
    h.send("start_speaking", stamp="s")
    h.send("end_speaking", stamp="s")
    error = [f for f in h.raw if f["t"] == "error"]
    assert [(f["code"], f["turn"]) for f in error] == [(ErrorCode.STT_UNAVAILABLE, 1)]
    assert listener.errors == [ErrorCode.STT_UNAVAILABLE] and listener.outcomes == [Outcome.FAILED]

