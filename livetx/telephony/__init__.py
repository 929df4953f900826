"""Phone calls: a carrier's media-stream WebSocket drives a normal live session.

Every carrier that lets software answer a call opens a WebSocket to the
server and streams the call's audio in JSON frames; they differ only in the
frames' shapes and the audio's format. A :class:`Carrier` is exactly that
difference, one small module per carrier (:mod:`livetx.telephony.twilio`,
:mod:`~livetx.telephony.telnyx`, :mod:`~livetx.telephony.plivo`,
:mod:`~livetx.telephony.vonage`); the call
itself (:mod:`livetx.telephony.call`) is the same for all of them, and is a
:class:`livetx.live.session.LiveSession` in talk mode fed through the same
seam the Live API socket uses. docs/telephony.md says how to set one up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from livetx.errors import ErrorCode
from livetx.telephony.codec import AudioFormat

Frame = dict[str, Any]


class CarrierError(Exception):
    """A frame the carrier should not have sent: refused, logged and counted; the call goes on."""

    def __init__(self, code: ErrorCode, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: The call cannot go on (an audio format we cannot take): close it.
        self.fatal = fatal


# What a carrier's frames mean, whatever their shape.


@dataclass(frozen=True)
class Connected:
    """The socket is the carrier's (some carriers say so before ``start``)."""


@dataclass(frozen=True)
class Start:
    """The stream begins: who, which call, which audio."""

    stream_id: str
    call_id: str
    audio: AudioFormat
    #: What the answering webhook passed on (Twilio ``customParameters``).
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Media:
    """Caller audio in the stream's format (already Base64-decoded)."""

    #: None where the carrier's frames name no stream (the socket is the stream).
    stream_id: str | None
    payload: bytes


@dataclass(frozen=True)
class Dtmf:
    stream_id: str | None
    digit: str


@dataclass(frozen=True)
class Mark:
    """A mark we sent came back: the audio before it has played (or was cleared)."""

    stream_id: str | None
    name: str


@dataclass(frozen=True)
class Stop:
    """The call is over (the caller hung up, or the carrier ended the stream)."""

    stream_id: str | None


@dataclass(frozen=True)
class Ignored:
    """A frame the carrier documents that a call has no use for (its own acknowledgements)."""

    stream_id: str | None = None


Event = Connected | Start | Media | Dtmf | Mark | Stop | Ignored


class Carrier(Protocol):
    """One carrier's frames: read what it sends, write what it takes."""

    #: The name in URLs, config and metrics (``twilio``).
    name: str
    #: The field that numbers its frames (a frame older than the last one is refused); None: not numbered.
    sequence_field: str | None
    #: Reply audio goes out in pieces of at most this long (ms), each one :meth:`media`.
    piece_ms: int
    #: The most unplayed audio (ms) the carrier holds; more is held back until it has room. None: no limit.
    ahead_ms: int | None

    def parse(self, frame: Frame) -> Event:
        """A decoded JSON frame as an event, or :class:`CarrierError`."""

    def binary(self, payload: bytes) -> Event:
        """A binary message as an event (raw audio), or :class:`CarrierError` where it sends none."""

    def media(self, stream_id: str, audio: bytes, fmt: AudioFormat) -> Frame | bytes:
        """Reply ``audio`` (already in the stream's format ``fmt``) to play to the caller: a JSON frame,
        or the bytes of a binary message."""

    def mark(self, stream_id: str, name: str) -> Frame:
        """Ask to be told (a :class:`Mark`) once the audio sent so far has played."""

    def clear(self, stream_id: str) -> Frame:
        """Drop the reply audio the carrier holds and has not played yet."""
