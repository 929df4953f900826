"""Bounded resources: every limit of ``[server]`` against a real loopback server."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from livetx.auth.keys import KeyStore
from livetx.web.admission import FrameRate, Verdict
from livetx.web.flow import SendBuffer

from .support import RunningServer, connect, open_socket, replied
from .test_live_ws import LIVE, OPEN_API, eventually

NO_SPEECH = '[tts]\nprovider = "none"\n[stt]\nprovider = "none"\n'


def test_frame_rate_allows_a_burst_then_refuses_then_closes() -> None:
    clock = Clock()
    rate = FrameRate(10, clock, burst=2)
    assert [rate.admit() for _ in range(20)] == [Verdict.ACCEPT] * 20
    assert [rate.admit() for _ in range(10)] == [Verdict.REFUSE] * 10
    assert rate.admit() is Verdict.CLOSE
    clock.advance(5)  # a client that slowed down is served again
    assert rate.admit() is Verdict.ACCEPT
    assert FrameRate(0, clock).admit() is Verdict.ACCEPT  # 0: no limit


def test_send_buffer_counts_only_while_the_transport_is_full() -> None:
    flow: list[str] = []
    buffer = SendBuffer(limit=100, pause=lambda: flow.append("pause"), resume=lambda: flow.append("resume"))
    assert not buffer.sent(1000)  # the transport takes it: not waiting
    buffer.pauseProducing()
    assert flow == ["pause"]  # the session holds back its speech
    assert not buffer.sent(60)
    assert buffer.sent(60)
    buffer.resumeProducing()
    assert flow == ["pause", "resume"]
    assert buffer.waiting == 0 and not buffer.sent(60)


@pytest_twisted.ensureDeferred
async def test_a_flood_is_refused_with_a_code_then_closed(livetx: Any) -> None:
    server = await livetx("[server]\nmax_frames_per_second = 2\n")
    client = await connect(server.url(LIVE, token=server.token()))
    for _ in range(40):
        client.send({"t": "interrupt"})  # harmless when idle: silent unless refused
    await client.closed
    assert client.frames and {f["code"] for f in client.frames} == {"RATE_LIMITED"}
    assert (client.close_code, client.close_reason) == (1008, "Too many messages")


@pytest_twisted.ensureDeferred
async def test_connections_per_user_are_capped(livetx: Any) -> None:
    server = await livetx("[server]\nmax_connections_per_user = 2\n")
    url = server.url(LIVE, token=server.token("alice"))
    first, second = await connect(url), await connect(url)
    third = await open_socket(url)
    await third.closed
    assert (third.close_code, third.close_reason) == (1008, "Too many connections for this user")
    bob = await connect(server.url(LIVE, token=server.token("bob")))
    await first.close_and_wait()
    connections = server.service.getServiceNamed("connections")
    await eventually(lambda: len(connections) == 2)
    again = await connect(url)
    assert replied(await again.turn("room again"))
    for client in (second, bob, again):
        await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_connections_per_api_key_are_capped(livetx: Any) -> None:
    server = await livetx("[server]\nmax_connections_per_key = 1\n")
    _, key = KeyStore(server.data_dir).create(["chat"])
    first = await connect(server.url(OPEN_API, username="d1", api_key=key))
    second = await open_socket(server.url(OPEN_API, username="d2", api_key=key))
    await second.closed
    assert second.close_code == 1008
    assert [(f["t"], f["code"]) for f in second.frames] == [("error", "RATE_LIMITED")]
    await first.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_idle_sockets_are_closed(livetx: Any) -> None:
    server = await livetx("[server]\nidle_timeout = 0.5\n")
    client = await connect(server.url(LIVE, token=server.token()))
    assert replied(await client.turn("activity keeps it open"))
    await client.closed
    assert (client.close_code, client.close_reason) == (1000, "Idle timeout")


class _Silent(Protocol):
    """A peer that connects, optionally writes, and then never answers anything."""

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.lost: Deferred[None] = Deferred()
        self.received = b""

    def connectionMade(self) -> None:
        self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


async def silent_peer(server: RunningServer, greeting: bytes = b"") -> _Silent:
    peer = _Silent(greeting)
    factory = ClientFactory.forProtocol(lambda: peer)
    reactor.connectTCP("127.0.0.1", server.port, factory)
    await peer.lost.addTimeout(10, reactor)
    return peer


def upgrade_request(server: RunningServer) -> bytes:
    path = server.url(LIVE, token=server.token()).split(str(server.port), 1)[1]
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_finishes_the_handshake_is_dropped(livetx: Any) -> None:
    server = await livetx("[server]\nhandshake_timeout = 0.3\n")
    peer = await silent_peer(server)  # TCP open, not a byte of HTTP
    assert peer.received == b""
    half = await silent_peer(server, upgrade_request(server)[:40])
    assert half.received == b""


@pytest_twisted.ensureDeferred
async def test_pings_free_a_peer_that_vanished(livetx: Any) -> None:
    server = await livetx("[server]\nping_interval = 0.2\nping_timeout = 0.3\n")
    peer = await silent_peer(server, upgrade_request(server))  # never answers a ping
    assert peer.received.startswith(b"HTTP/1.1 101")
    connections = server.service.getServiceNamed("connections")
    await eventually(lambda: len(connections) == 0)


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_closed_not_buffered_for(livetx: Any) -> None:
    server = await livetx("[server]\nmax_send_buffer_bytes = 262144\n" + NO_SPEECH)
    client = await connect(server.url(LIVE, token=server.token()))
    client.transport.pauseProducing()  # the device stops reading its socket
    words = " ".join(["w" * 999] * 3000)  # ~3 MB: echoed as user_msg, deltas and bot_msg
    client.send({"t": "text_input", "text": words})
    protocol = next(iter(server.service.getServiceNamed("connections")._open))
    await eventually(lambda: protocol.state != protocol.STATE_OPEN)
    assert protocol.buffer is not None and protocol.buffer.waiting > 262144
    assert protocol.buffer.waiting < 4 * 1024 * 1024  # it stopped soon after the limit
    client.transport.resumeProducing()
    await client.closed
    assert (client.close_code, client.close_reason) == (1008, "Client reads too slowly")


@pytest_twisted.ensureDeferred
async def test_an_api_key_cannot_use_up_a_users_own_sockets(livetx: Any) -> None:
    """A key holder chooses the username freely: its sockets count apart from the user's own."""
    server = await livetx("[server]\nmax_connections_per_user = 1\n")
    _, key = KeyStore(server.data_dir).create(["chat"])
    _, other_key = KeyStore(server.data_dir).create(["chat"])
    squatter = await connect(server.url(OPEN_API, username="alice", api_key=key))
    crowded = await open_socket(server.url(OPEN_API, username="alice", api_key=key))
    await crowded.closed
    assert (crowded.close_code, crowded.close_reason) == (1008, "Too many connections for this user")
    browser = await connect(server.url(LIVE, token=server.token("alice")))
    device = await connect(server.url(OPEN_API, username="alice", api_key=other_key))
    assert replied(await browser.turn("still mine"))
    for client in (squatter, browser, device):
        await client.close_and_wait()
