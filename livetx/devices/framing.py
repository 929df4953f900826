"""The three binary framings a xiaozhi device may speak, as its firmware's docs/websocket.md defines them.

- version 1: the WebSocket message is one Opus packet, nothing else;
- version 2: ``BinaryProtocol2``, a 16-byte header (version, type, reserved,
  a millisecond timestamp for server-side echo cancellation, payload size);
- version 3: ``BinaryProtocol3``, a 4-byte header (type, reserved, payload size).

Header fields are in network byte order (the firmware fills them with
``htons``/``htonl``). Type 0 is Opus; version 2 also names type 1, JSON,
which the firmware never sends in binary (JSON goes in text messages), so it
is refused like any other type.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from livetx.errors import ErrorCode

#: The versions a device may announce (``Protocol-Version`` and ``hello.version``).
VERSIONS = (1, 2, 3)
#: The message type of an Opus packet in versions 2 and 3.
OPUS = 0
_V2 = struct.Struct("!HHIII")
_V3 = struct.Struct("!BBH")


class FramingError(Exception):
    """A binary message that does not hold one Opus packet in the negotiated framing."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Packet:
    """One Opus packet from the device, and its timestamp when the framing carries one (version 2)."""

    opus: bytes
    timestamp: int | None = None


def unpack(version: int, data: bytes) -> Packet:
    """The Opus packet in one binary message; :class:`FramingError` if the header does not fit."""
    if version == 1:
        return Packet(data)
    header = _V2 if version == 2 else _V3
    if len(data) < header.size:
        raise FramingError(ErrorCode.INVALID_AUDIO, f"a version {version} frame needs a {header.size}-byte header")
    if version == 2:
        framed, kind, _, timestamp, size = _V2.unpack_from(data)
        if framed != 2:
            raise FramingError(ErrorCode.INVALID_AUDIO, f"a version 2 frame says it is version {framed}")
    else:
        kind, _, size = _V3.unpack_from(data)
        timestamp = None
    if kind != OPUS:
        raise FramingError(ErrorCode.UNSUPPORTED_FRAME, f"binary message type {kind} (only 0, Opus, is taken)")
    payload = data[header.size:]
    if len(payload) != size:
        raise FramingError(ErrorCode.INVALID_AUDIO, f"header says {size} bytes of payload, the frame has {len(payload)}")
    return Packet(payload, timestamp)


def pack(version: int, opus: bytes, timestamp: int = 0) -> bytes:
    """One Opus packet as a binary message in ``version``'s framing."""
    if version == 1:
        return opus
    if version == 2:
        return _V2.pack(2, OPUS, 0, timestamp & 0xFFFFFFFF, len(opus)) + opus
    return _V3.pack(OPUS, 0, len(opus)) + opus
