"""The twisted.web internals ``livetx/web/twisted_web.py`` relies on, checked loudly.

If a Twisted release renames or moves any of them, these fail first, with
the name of what changed, rather than the server quietly reading bodies again.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from livetx.web.twisted_web import GuardedChannel, GuardedRequest, make_site


class Seen(Request):
    """Records what the channel knows when the headers are complete."""

    line: tuple[Any, ...] = ()

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        Seen.line = (channel._command, channel._path, channel._version, length)
        super().gotLength(length)


def test_the_request_line_is_known_to_the_channel_when_the_headers_end() -> None:
    site = Site(Resource(), requestFactory=Seen, parsePOSTFormSubmission=False)
    channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST /a/b?c=d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
    assert Seen.line == (b"POST", b"/a/b?c=d", b"HTTP/1.1", 3)
    assert all(hasattr(HTTPChannel, name) for name in ("requestDone", "loseConnection", "allHeadersReceived"))


class Form(Resource):
    isLeaf = True
    body_limit = staticmethod(lambda request: 100)
    check_headers = staticmethod(lambda request: None)

    def render_POST(self, request: Request) -> bytes:
        return repr(sorted(request.args)).encode()


def serve(data: bytes) -> StringTransport:
    site = make_site(Form(), admit=lambda addr: lambda: None)
    channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
    assert isinstance(channel, GuardedChannel) and channel.requestFactory is GuardedRequest
    channel.callLater = Clock().callLater
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return transport


def test_form_bodies_are_left_unparsed() -> None:
    body = b"a=1&b=2"
    out = serve(b"POST /?q=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert out.value().endswith(b"[b'q']")  # the query string only


def test_a_body_past_the_limit_is_answered_from_the_headers() -> None:
    out = serve(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n")
    assert out.value().startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in out.value()
    assert out.disconnecting


def test_an_address_over_its_limit_gets_no_channel() -> None:
    site = make_site(Form(), admit=lambda addr: None)
    assert site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1)) is None  # Twisted then drops the connection


def test_bytes_of_a_head_do_not_restart_the_timeout_but_the_body_does() -> None:
    """Twisted restarts its timeout in ``dataReceived`` through ``resetTimeout``, which the channel overrides."""
    clock = Clock()
    site = make_site(Form(), admit=lambda addr: lambda: None, timeout=1.0, reactor=clock)
    channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
    transport = StringTransport()
    channel.makeConnection(transport)
    for byte in b"POST / HT":
        channel.dataReceived(bytes([byte]))
        clock.advance(0.1)
    assert not transport.disconnecting
    clock.advance(0.15)
    assert transport.disconnecting  # 1 s after the connection opened, though a byte came every 0.1 s
    slow_body = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 2))
    transport = StringTransport()
    slow_body.makeConnection(transport)
    slow_body.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
    for _ in range(20):
        clock.advance(0.5)
        slow_body.dataReceived(b"a")
    assert not transport.disconnecting  # the body: an idle timeout, as before
