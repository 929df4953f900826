"""Decoding client messages: every way to get a frame wrong has its own code."""

from __future__ import annotations

import json

import pytest

from livetx.errors import ErrorCode
from livetx.live import frames
from livetx.live.frames import FrameError


@pytest.mark.parametrize(
    "payload, binary, code",
    [
        (b"{not json", False, ErrorCode.INVALID_JSON),
        (b"\xff\xfe", False, ErrorCode.INVALID_JSON),
        (b"[" * 100_000 + b"]" * 100_000, False, ErrorCode.INVALID_JSON),
        (b"1" * 10_000, False, ErrorCode.INVALID_JSON),
        (b"[1, 2]", False, ErrorCode.INVALID_MESSAGE_FORMAT),
        (b'"text_input"', False, ErrorCode.INVALID_MESSAGE_FORMAT),
        (b"{}", False, ErrorCode.INVALID_MESSAGE_FORMAT),
        (b'{"t": 5}', False, ErrorCode.INVALID_MESSAGE_FORMAT),
        (b'{"t": null}', False, ErrorCode.INVALID_MESSAGE_FORMAT),
        (b'{"t": "text_input"}', True, ErrorCode.UNSUPPORTED_FRAME),
    ],
)
def test_bad_messages_have_codes(payload: bytes, binary: bool, code: str) -> None:
    with pytest.raises(FrameError) as caught:
        frames.decode(payload, binary)
    assert caught.value.code == code
    error = frames.error(caught.value.code, caught.value.message)
    assert error["t"] == "error" and error["code"] == code and error["data"]


def test_round_trip_keeps_non_ascii_readable() -> None:
    frame = {"t": "bot_text_chunk", "data": {"text": "你好, Grüße"}}
    encoded = frames.encode(frame)
    assert "你好".encode() in encoded
    assert frames.decode(encoded, False) == frame
    assert json.loads(encoded) == frame


def test_text_field_takes_first_usable_alias() -> None:
    assert frames.text_field({"text": "  hi "}, "text", "message") == "hi"
    assert frames.text_field({"text": 3, "message": "yo"}, "text", "message") == "yo"
    for bad in ({}, {"text": ""}, {"text": "   "}, {"text": ["a"]}):
        with pytest.raises(FrameError) as caught:
            frames.text_field(bad, "text", "message")
        assert caught.value.code == ErrorCode.INVALID_MESSAGE_FORMAT
