"""Autobahn internals that livetx's server sockets override.

Why each exists, in short (benchmarks/RESULTS.md, "Why the code is shaped
this way", says how much each saves):

- Autobahn copies each of its settings from the factory onto every new
  socket and pretty-prints the list for a debug line, debug logging on or
  not. :func:`settings_from_factory` leaves the list it walks
  (``CONFIG_ATTRS``) empty and reads each setting from the factory on first
  use instead.
- Autobahn builds a coloured debug line for every read and write, debug
  logging on or not. :class:`QuietIO` skips only that line: reads go
  straight to ``_dataReceived``, and a plain write (nothing queued, chopped
  or logged) straight to the transport, with the traffic counter Autobahn
  would have kept.
- ``sendClose`` accepts only 1000 and 3000-4999 from applications, but the
  reference's clients expect the standard codes: :func:`close_with_code`
  sends the close frame itself.
"""

from __future__ import annotations

from typing import Any, TypeVar

from autobahn.util import encode_truncate
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import ITransport

_P = TypeVar("_P", bound=type[WebSocketServerProtocol])

#: Autobahn's limit on a close frame's reason, in bytes.
MAX_REASON_BYTES = 123


class _FromFactory:
    """One Autobahn setting, read from the factory when the socket first uses it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, protocol: Any, owner: type | None = None) -> Any:
        if protocol is None:
            return self
        value = protocol.__dict__[self.name] = getattr(protocol.factory, self.name)
        return value


def settings_from_factory(cls: _P) -> _P:
    """Class decorator: ``cls`` reads Autobahn's settings from its factory, lazily."""
    for name in WebSocketServerProtocol.CONFIG_ATTRS:
        setattr(cls, name, _FromFactory(name))
    cls.CONFIG_ATTRS = []
    return cls


class QuietIO(WebSocketServerProtocol):
    """Reads and plain writes without Autobahn's per-call debug line."""

    # Set by Autobahn from the factory's settings; declared for the type checker.
    logOctets: bool
    transport: ITransport

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if sync or chopsize or self.send_queue or self.logOctets or self.state != self.STATE_OPEN:
            super().sendData(data, sync, chopsize)  # queued, chopped or logged: Autobahn's way
            return
        self.transport.write(data)
        self.trafficStats.outgoingOctetsWireLevel += len(data)


def close_with_code(protocol: WebSocketProtocol, code: int, reason: str) -> None:
    """Close with any protocol code, such as 1008 or 1001, and a reason cut to fit."""
    protocol.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, MAX_REASON_BYTES), isReply=False)
