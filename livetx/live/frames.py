"""Live API frames: turn client bytes into a checked dict, and dicts into bytes.

Everything a client can get wrong about a single frame is caught here and
reported as a :class:`FrameError` carrying the error-frame ``code``, so the
layers above never see malformed input.
"""

from __future__ import annotations

from typing import Any

import orjson

Frame = dict[str, Any]

# Error codes (see docs/protocol.md); the first two are the reference's own.
INVALID_MESSAGE_FORMAT = "INVALID_MESSAGE_FORMAT"
PROCESSING_ERROR = "PROCESSING_ERROR"
INVALID_JSON = "INVALID_JSON"
UNSUPPORTED_FRAME = "UNSUPPORTED_FRAME"
UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
INVALID_STATE = "INVALID_STATE"
STAMP_MISMATCH = "STAMP_MISMATCH"
INVALID_AUDIO = "INVALID_AUDIO"
AUDIO_TOO_LONG = "AUDIO_TOO_LONG"
FORBIDDEN = "FORBIDDEN"
STT_UNAVAILABLE = "STT_UNAVAILABLE"
INTERNAL_ERROR = "INTERNAL_ERROR"
# Extension codes (docs/protocol-extensions.md): only opted-in clients can meet them.
UNKNOWN_SETTING = "UNKNOWN_SETTING"
INVALID_SETTING = "INVALID_SETTING"
UNKNOWN_TURN = "UNKNOWN_TURN"
RATE_LIMITED = "RATE_LIMITED"
RESUME_EXPIRED = "RESUME_EXPIRED"


class FrameError(Exception):
    """A client frame we refuse; becomes one error frame, the session lives on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def frame(self) -> Frame:
        return error(self.code, self.message)


def error(code: str, message: str) -> Frame:
    """The live-mode error frame: the reference's shape plus a ``code``."""
    return {"t": "error", "data": message, "code": code}


def chat_error(code: str, message: str) -> Frame:
    """An error in the unified chat envelope (chat mode, Open API refusals)."""
    return {"ct": "chat", "t": "error", "code": code, "data": message}


def decode(payload: bytes, is_binary: bool) -> Frame:
    """Parse one WebSocket message into a frame with a string ``t``."""
    if is_binary:
        raise FrameError(UNSUPPORTED_FRAME, "binary messages are not supported; send JSON text")
    try:
        frame = orjson.loads(payload)
    except orjson.JSONDecodeError:
        # Also what orjson raises for invalid UTF-8, lone surrogates, NaN,
        # integers past 64 bits and nesting deeper than 1024.
        raise FrameError(INVALID_JSON, "message is not valid JSON") from None
    if not isinstance(frame, dict):
        raise FrameError(INVALID_MESSAGE_FORMAT, "message must be a JSON object")
    if not isinstance(frame.get("t"), str):
        raise FrameError(INVALID_MESSAGE_FORMAT, "field 't' must be a string")
    return frame


def encode(frame: Frame) -> bytes:
    """Compact UTF-8 JSON: captions in any script stay readable and small.

    orjson, because a turn sends about 60 frames and an audio frame is one
    long Base64 string: the standard encoder scans it for escapes at ~16 µs
    a frame where orjson takes under 1 µs.
    """
    return orjson.dumps(frame)


def text_field(frame: Frame, *names: str) -> str:
    """The first of ``names`` that holds a non-blank string, stripped."""
    for name in names:
        value = frame.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise FrameError(INVALID_MESSAGE_FORMAT, f"field '{names[0]}' must be non-empty text")
