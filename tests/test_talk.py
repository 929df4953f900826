"""Protocol extensions on a fake clock: turn ids, session_update, server turn detection."""

from __future__ import annotations

from typing import Any

import pytest

from livetx.live import frames
from livetx.live.settings import Settings

from .doubles import b64
from .test_session import Harness

#: The fields of each frame type in the reference protocol.
REFERENCE_FIELDS = {"end": {"t"}, "stop_play": {"t"}, "error": {"t", "data", "code"}}


def turn_of(h: Harness, kind: str) -> list[Any]:
    return [f.get("turn") for f in h.raw if f["t"] == kind]


def test_every_frame_of_a_turn_carries_its_id_and_nothing_else_changes() -> None:
    h = Harness()
    h.send("text_input", text="first")
    h.send("text_input", text="refused while busy")
    h.llm.last.say("One sentence here. ")
    h.tts.finish(0)
    h.llm.last.finish()
    h.send("start_speaking", stamp="v")
    h.send("end_speaking", stamp="v")
    h.stt.requests[0][1].callback("second")
    h.llm.last.say("Talking on and on. ")
    h.send("interrupt")

    busy = [f for f in h.raw if f.get("code") == frames.PROCESSING_ERROR]
    assert busy == [{"t": "error", "data": "Session is busy", "code": "PROCESSING_ERROR"}]
    turn_frames = [f for f in h.raw if f not in busy]
    ids = [f["turn"] for f in turn_frames]
    assert ids == sorted(ids) and set(ids) == {1, 2}
    assert turn_of(h, "user_msg") == [1, 2] and turn_of(h, "stop_play") == [2]
    assert turn_of(h, "end") == [1]
    for frame in turn_frames:
        assert set(frame) - {"turn"} == REFERENCE_FIELDS.get(frame["t"], {"t", "data"})


def test_session_update_validates_and_reports_every_setting() -> None:
    h = Harness()
    (reply,) = h.send("session_update", turn_detection="server", silence_ms=800)
    assert reply == {"t": "session_updated", "data": {**vars(Settings()), "turn_detection": "server", "silence_ms": 800}}
    assert h.session.settings.server_detection

    for fields, code in [
        ({"turn_detect": "server"}, frames.UNKNOWN_SETTING),
        ({"turn_detection": "sometimes"}, frames.INVALID_SETTING),
        ({"silence_ms": 50}, frames.INVALID_SETTING),
        ({"silence_ms": True}, frames.INVALID_SETTING),
        ({"vad_aggressiveness": 1.5}, frames.INVALID_SETTING),
        ({"audio_transport": ["binary"]}, frames.INVALID_SETTING),
        ({"preroll_ms": 100, "colour": "red"}, frames.UNKNOWN_SETTING),
    ]:
        (error,) = h.send("session_update", **fields)
        assert (error["t"], error["code"]) == ("error", code), fields
    assert h.session.settings.silence_ms == 800 and h.session.settings.preroll_ms == 300  # nothing half-applied

    (reply,) = h.send("session_update", turn_detection="client")
    assert reply["data"]["turn_detection"] == "client" and reply["data"]["silence_ms"] == 800
