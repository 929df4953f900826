"""Field checks every carrier module shares: the frames differ in names, not in kinds of value."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from livetx.errors import ErrorCode
from livetx.telephony import CarrierError, Connected, Dtmf, Event, Frame, Mark, Media, Stop


def section(frame: Frame, name: str) -> dict[str, Any]:
    """A frame's nested object (``media``, ``start``, ``mark``…)."""
    value = frame.get(name)
    if not isinstance(value, dict):
        raise CarrierError(ErrorCode.INVALID_MESSAGE_FORMAT, f"{frame.get('event')!r} frame needs an object {name!r}")
    return value


def start_of(frame: Frame, format_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``start`` frame's ``start`` object and its media format object (named ``format_key``)."""
    start = section(frame, "start")
    return start, section(start, format_key)


def text(values: dict[str, Any], name: str, where: str) -> str:
    value = values.get(name)
    if not isinstance(value, str) or not value:
        raise CarrierError(ErrorCode.INVALID_MESSAGE_FORMAT, f"field {where}.{name} must be a non-empty string")
    return value


def payload(media: dict[str, Any]) -> bytes:
    """The Base64 audio of a ``media`` object."""
    data = media.get("payload")
    if not isinstance(data, str):
        raise CarrierError(ErrorCode.INVALID_AUDIO, "field media.payload must be Base64 text")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise CarrierError(ErrorCode.INVALID_AUDIO, "field media.payload is not valid Base64") from None


def parameters(values: Any) -> dict[str, str]:
    """What the answering side passed to the stream (``customParameters``), as strings."""
    return {str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else {}


def b64(audio: bytes) -> str:
    return base64.b64encode(audio).decode("ascii")


def unsupported(encoding: Any, rate: Any) -> CarrierError:
    return CarrierError(ErrorCode.INVALID_AUDIO, f"audio {encoding!r} at {rate!r} Hz is not supported", fatal=True)


def unknown(event: Any) -> CarrierError:
    return CarrierError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"unknown event {event!r}")


class JsonFrames:
    """What the carriers that speak JSON alone share: numbered frames, audio in half-second pieces."""

    sequence_field: str | None = "sequenceNumber"
    #: Half a second of audio per ``media`` frame: few frames, and the carrier plays them back to back.
    piece_ms = 500
    #: They document no limit to the audio they hold.
    ahead_ms: int | None = None

    def binary(self, payload: bytes) -> Event:
        raise CarrierError(ErrorCode.UNSUPPORTED_FRAME, "binary message")


def common(frame: Frame, stream_key: str) -> Event | None:
    """The events every carrier sends alike (Twilio's names, the stream id under ``stream_key``);
    None for the rest, which the carrier's own module reads."""
    event = frame.get("event")
    if event == "connected":
        return Connected()
    if event not in ("media", "dtmf", "mark", "stop"):
        return None
    stream = text(frame, stream_key, "frame")
    if event == "media":
        return Media(stream, payload(section(frame, "media")))
    if event == "dtmf":
        return Dtmf(stream, text(section(frame, "dtmf"), "digit", "dtmf"))
    if event == "mark":
        return Mark(stream, text(section(frame, "mark"), "name", "mark"))
    return Stop(stream)
