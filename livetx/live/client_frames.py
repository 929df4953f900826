"""The fields of each client frame, checked before the session's state machine sees it."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Callable

from livetx.audio import SAMPLE_WIDTH
from livetx.errors import ErrorCode
from livetx.live import frames
from livetx.live.frames import Frame, FrameError


def _stamp(frame: Frame, required: bool) -> dict[str, Any]:
    stamp = frame.get("stamp")
    if stamp is None and not required:
        return {"stamp": None}
    if not isinstance(stamp, str) or not stamp:
        raise FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, "field 'stamp' must be a non-empty string")
    return {"stamp": stamp}


def _audio(frame: Frame) -> dict[str, Any]:
    data = frame.get("data")
    if not isinstance(data, str):
        raise FrameError(ErrorCode.INVALID_AUDIO, "field 'data' must be Base64 text")
    try:
        pcm = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise FrameError(ErrorCode.INVALID_AUDIO, "field 'data' is not valid Base64") from None
    return pcm_fields(pcm)


def pcm_fields(pcm: bytes) -> dict[str, Any]:
    if len(pcm) % SAMPLE_WIDTH:
        raise FrameError(ErrorCode.INVALID_AUDIO, "audio must be 16-bit PCM: odd number of bytes")
    return {"pcm": pcm}


def _truncation(frame: Frame) -> dict[str, Any]:
    turn, end = frame.get("turn"), frame.get("audio_end_ms")
    if isinstance(turn, bool) or not isinstance(turn, int):
        raise FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, "field 'turn' must be a turn id (an integer)")
    if isinstance(end, bool) or not isinstance(end, (int, float)) or not 0 <= end < float("inf"):
        raise FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, "field 'audio_end_ms' must be a number of ms, 0 or more")
    return {"turn": turn, "audio_end_ms": end}


#: Field checks per client frame; they run before the state machine sees it.
PARSERS: dict[str, Callable[[Frame], dict[str, Any]]] = {
    "text_input": lambda f: {"text": frames.text_field(f, "text", "message")},
    "start_speaking": lambda f: _stamp(f, required=False),
    "speaking_part": _audio,
    "end_speaking": lambda f: _stamp(f, required=True),
    "interrupt": lambda f: {},
    "session_update": lambda f: {"frame": f},
    "truncate": _truncation,
}


