"""Live API frames: turn client bytes into a checked dict, and dicts into bytes.

Everything a client can get wrong about a single frame is caught here and
reported as a :class:`FrameError` carrying the error-frame ``code``, so the
layers above never see malformed input.
"""

from __future__ import annotations

from typing import Any

import orjson

# FrameError is defined with every other error; the codec raises it, so it is importable from here too.
from livetx.errors import ErrorCode
from livetx.errors import FrameError as FrameError

Frame = dict[str, Any]

def error(code: ErrorCode, message: str) -> Frame:
    """The live-mode error frame: the reference's shape plus a ``code``."""
    return {"t": "error", "data": message, "code": code}


def chat_error(code: ErrorCode, message: str) -> Frame:
    """An error in the unified chat envelope (chat mode, Open API refusals)."""
    return {"ct": "chat", "t": "error", "code": code, "data": message}


def decode(payload: bytes, is_binary: bool) -> Frame:
    """Parse one WebSocket message into a frame with a string ``t``."""
    if is_binary:
        raise FrameError(ErrorCode.UNSUPPORTED_FRAME, "binary messages are not supported; send JSON text")
    try:
        frame = orjson.loads(payload)
    except orjson.JSONDecodeError:
        # Also what orjson raises for invalid UTF-8, lone surrogates, NaN,
        # integers past 64 bits and nesting deeper than 1024.
        raise FrameError(ErrorCode.INVALID_JSON, "message is not valid JSON") from None
    if not isinstance(frame, dict):
        raise FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, "message must be a JSON object")
    if not isinstance(frame.get("t"), str):
        raise FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, "field 't' must be a string")
    return frame


def encode(frame: Frame) -> bytes:
    """Compact UTF-8 JSON: captions in any script stay readable and small.

    orjson, because a turn sends about 60 frames and an audio frame is one
    long Base64 string, which the standard encoder scans for escapes
    (benchmarks/RESULTS.md, "Why the code is shaped this way").
    """
    return orjson.dumps(frame)


def timestamp(seconds: float) -> int:
    """A frame's ``ts``: clock seconds as whole milliseconds."""
    return int(seconds * 1000)


def text_field(frame: Frame, *names: str) -> str:
    """The first of ``names`` that holds a non-blank string, stripped."""
    for name in names:
        value = frame.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, f"field '{names[0]}' must be non-empty text")


def no_speech(ts: int) -> Frame:
    """``user_msg`` for a voice turn that heard no words: said, not swallowed (docs/protocol.md)."""
    return {"t": "user_msg", "data": {"text": "", "ts": ts, "code": ErrorCode.NO_SPEECH}}
