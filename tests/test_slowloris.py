"""Connections that never finish a request, and addresses that open too many (issue 13.5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

from livetx.web.admission import AddressLimit

from .support import RunningServer, connect, open_socket, replied
from .test_limits import upgrade_request
from .test_live_ws import LIVE, eventually
from .test_twistd import make_certificate


class Drip(Protocol):
    """Sends ``data`` one byte every ``every`` seconds, so that an idle timeout never fires."""

    def __init__(self, data: bytes, every: float, first: bytes = b"") -> None:
        self.data, self.every, self.first = data, every, first
        self.lost: Deferred[float] = Deferred()
        self.received = b""
        self.sent = 0

    def connectionMade(self) -> None:
        self.transport.write(self.first)
        self.loop = LoopingCall(self.drip)
        self.loop.start(self.every, now=False)

    def drip(self) -> None:
        if self.sent < len(self.data):
            self.transport.write(self.data[self.sent : self.sent + 1])
            self.sent += 1

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.loop.running:
            self.loop.stop()
        self.lost.callback(reactor.seconds())


def dial(server: RunningServer, protocol: Protocol) -> None:
    reactor.connectTCP("127.0.0.1", server.port, ClientFactory.forProtocol(lambda: protocol))


@pytest_twisted.ensureDeferred
async def test_headers_dripped_byte_by_byte_meet_an_absolute_deadline(livetx: Any) -> None:
    server = await livetx("[server]\nhandshake_timeout = 0.5\n")
    drips = [Drip(upgrade_request(server), every=0.1) for _ in range(20)]
    drips.append(Drip(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100, every=0.1))
    for drip in drips:
        dial(server, drip)
    # The deadline itself is held on a Clock (tests/test_fences.py); here, the failure it guards
    # against: a connection that lives as long as its bytes keep coming. Counted in bytes, not seconds.
    for drip in drips:
        await drip.lost.addTimeout(len(drip.data) * 0.1, reactor)  # all of it sent, and more, by then
    assert all(0 < drip.sent < 20 < len(drip.data) and drip.received == b"" for drip in drips)


@pytest_twisted.ensureDeferred
async def test_the_deadline_holds_for_every_request_of_a_kept_alive_connection(livetx: Any) -> None:
    server = await livetx("[server]\nhandshake_timeout = 0.5\n")
    second = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100
    drip = Drip(second, every=0.1, first=b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the first is quick
    dial(server, drip)
    await drip.lost.addTimeout(5, reactor)
    assert drip.received.startswith(b"HTTP/1.1 200") and drip.received.count(b"HTTP/1.1") == 1


@pytest_twisted.ensureDeferred
async def test_a_sane_client_is_unaffected(livetx: Any) -> None:
    server = await livetx("[server]\nhandshake_timeout = 0.5\n")
    client = await connect(server.url(LIVE, token=server.token()))
    await deferLater(reactor, 0.8, lambda: None)  # past the deadline: it applies to headers only
    assert replied(await client.turn("still open"))
    await client.close_and_wait()


class Idle(Protocol):
    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_one_address_may_hold_only_so_many_connections(livetx: Any) -> None:
    server = await livetx("[server]\nmax_connections_per_address = 3\nlimit_loopback = true\n")
    sockets = [await connect(server.url(LIVE, token=server.token())) for _ in range(2)]
    idle = Idle()
    dial(server, idle)  # a connection that says nothing counts too
    await deferLater(reactor, 0.1, lambda: None)
    refused = Idle()
    dial(server, refused)
    await refused.lost.addTimeout(5, reactor)  # closed at once, before a byte
    late = await open_socket(server.url(LIVE, token=server.token()))
    await late.closed.addTimeout(5, reactor)
    assert late.close_code != 1000 and not late.frames
    await sockets[0].close_and_wait()  # a socket's place is freed when it closes
    await eventually(lambda: len(server.service.getServiceNamed("connections")) == 1)
    again = await connect(server.url(LIVE, token=server.token()))
    assert replied(await again.turn("room again"))
    for client in (sockets[1], again):
        await client.close_and_wait()
    idle.transport.loseConnection()
    await idle.lost


@pytest_twisted.ensureDeferred
async def test_loopback_is_exempt_unless_configured(livetx: Any) -> None:
    server = await livetx("[server]\nmax_connections_per_address = 1\n")
    sockets = [await connect(server.url(LIVE, token=server.token())) for _ in range(3)]
    for client in sockets:
        await client.close_and_wait()


def test_address_limit_counts_and_releases() -> None:
    class Addr:
        def __init__(self, host: str) -> None:
            self.host = host

    limit = AddressLimit(2, limit_loopback=False)
    releases = [limit.admit(Addr("10.0.0.1")), limit.admit(Addr("10.0.0.1"))]
    assert limit.admit(Addr("10.0.0.1")) is None and limit.admit(Addr("10.0.0.2")) is not None
    assert all(limit.admit(Addr(h)) is not None for h in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] * 3)
    releases[0]()  # type: ignore[misc]
    assert limit.admit(Addr("10.0.0.1")) is not None
    assert AddressLimit(0).admit(Addr("10.0.0.1")) is not None  # 0: no limit


@pytest_twisted.ensureDeferred
async def test_a_wss_socket_gives_its_place_back_when_it_closes(tmp_path: Path, livetx: Any) -> None:
    """Over TLS the socket sits inside a protocol wrapper; its address's place is released all the same."""
    key_path, cert_path = make_certificate(tmp_path)
    server = await livetx("[server]\nmax_connections_per_address = 1\nlimit_loopback = true\n",
                          listen=f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}")
    tls = ssl.optionsForClientTLS("127.0.0.1", trustRoot=ssl.Certificate.loadPEM(cert_path.read_bytes()))
    url = server.url(LIVE, scheme="wss", token=server.token())
    for _ in range(3):  # one at a time, each in the one place
        client = await connect(url, tls=tls)
        assert replied(await client.turn("secure"))
        await client.close_and_wait()
        await eventually(lambda: len(server.service.getServiceNamed("connections")) == 0)
        await deferLater(reactor, 0.05, lambda: None)
