"""The socket layer's own read and write paths, on a StringTransport."""

from __future__ import annotations

from typing import Any

import pytest
from autobahn.twisted import websocket as twisted_websocket
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as websocket_protocol
from twisted.internet.testing import StringTransport

from livetx.live import frames
from livetx.web.protocol import LiveServerProtocol


@pytest.fixture
def formatted(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every call of Autobahn's debug-line helpers, wherever it comes from."""
    calls: list[Any] = []
    for module in (websocket_protocol, twisted_websocket):
        monkeypatch.setattr(module, "hltype", lambda obj: calls.append(obj) or "")
        monkeypatch.setattr(module, "hlval", lambda obj, **kw: calls.append(obj) or "")
    return calls


def open_protocol() -> tuple[LiveServerProtocol, StringTransport]:
    protocol = LiveServerProtocol()
    protocol.factory = WebSocketServerFactory()  # type: ignore[assignment]
    transport = StringTransport()
    protocol.makeConnection(transport)
    # What a completed handshake sets up (Autobahn's processHandshake).
    protocol.state = protocol.STATE_OPEN
    protocol.websocket_version = 13
    protocol.inside_message = False
    protocol.current_frame = None
    return protocol, transport


def test_frames_are_written_whole_and_counted_without_debug_lines(formatted: list[Any]) -> None:
    protocol, transport = open_protocol()
    formatted.clear()  # once per connection is fine; per frame is not
    protocol.send({"t": "end"})
    protocol.send({"t": "bot_delta_chunk", "data": {"text": "héllo"}})
    first, second = frames.encode({"t": "end"}), frames.encode({"t": "bot_delta_chunk", "data": {"text": "héllo"}})
    assert transport.value() == b"\x81" + bytes([len(first)]) + first + b"\x81" + bytes([len(second)]) + second
    assert protocol.trafficStats.outgoingOctetsWireLevel == len(transport.value())
    assert formatted == []


def test_reads_reach_the_websocket_parser_without_debug_lines(formatted: list[Any]) -> None:
    protocol, transport = open_protocol()
    formatted.clear()
    payload = b'{"t": "interrupt"}'
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    protocol.dataReceived(b"\x81" + bytes([0x80 | len(payload)]) + mask + masked)
    assert protocol.trafficStats.incomingOctetsWireLevel == 2 + 4 + len(payload)
    assert protocol.trafficStats.incomingWebSocketMessages == 1
    assert formatted == []


def test_settings_are_read_from_the_factory_not_copied_and_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    printed: list[Any] = []
    monkeypatch.setattr(websocket_protocol, "pformat", lambda obj: printed.append(obj) or "")
    protocol = LiveServerProtocol()
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(maxMessagePayloadSize=1234, autoPingInterval=0)
    protocol.factory = factory  # type: ignore[assignment]
    protocol.makeConnection(StringTransport())
    assert printed == [[]]  # Autobahn's per-socket settings list is empty
    assert protocol.maxMessagePayloadSize == 1234 and "maxMessagePayloadSize" in vars(protocol)
    assert protocol.openHandshakeTimeout == factory.openHandshakeTimeout
    assert {name for name in WebSocketServerProtocol.CONFIG_ATTRS if not hasattr(protocol, name)} == set()
