"""Every use of ``twisted.web`` internals, fenced in one module.

``twisted.web`` reads a whole request body before any resource sees the
request, into memory or a temporary file, with no size limit, and (unless
the Site is told otherwise) parses form bodies on the reactor thread. A
server facing the Internet must refuse a body it does not want as soon as
the headers say so. Twisted offers no public hook between "headers read"
and "body read" except :meth:`Request.gotLength`, and the request line is
then known only to the channel (``_command``, ``_path``, ``_version``);
``tests/test_fences.py`` fails loudly if those change shape.

Routes declare what they accept through :class:`BodyRoute`; everything else
takes no body at all. A socket upgraded from a request takes the producer
slot of its transport over from the channel (:func:`take_over_producer`).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable
from urllib.parse import unquote_to_bytes

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, parse_qs
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from livetx.errors import ErrorCode, HTTPError, LivetxError

#: Writes a refusal's body (and sets its status): the server's one shape of HTTP error.
RefusalBody = Callable[[Request, LivetxError], bytes]


@runtime_checkable
class BodyRoute(Protocol):
    """A resource that takes a request body, and checks a request before reading it."""

    def body_limit(self, request: Request) -> int:
        """Bytes of body this request may send (0: none)."""

    def check_headers(self, request: Request) -> None:
        """Raise a :class:`~livetx.errors.LivetxError` (it has its status) to answer before the body is read (method, credentials)."""


@runtime_checkable
class LookupRoute(Protocol):
    """A resource whose requests may need a look-up (off the reactor) before they can be judged."""

    def lookup(self, request: Request) -> Deferred[None] | None:
        """What to wait for before judging ``request`` from its headers (None: judge it now)."""


class GuardedRequest(Request):
    """A request that decides at the end of its headers whether its body is wanted.

    An unwanted body (a route that takes none, more than the route's limit,
    a request its route refuses from the headers alone, such as a missing
    API key) is answered at once, and the connection closed without
    reading it. A wanted one is counted as it streams in, and refused the
    moment it passes the limit (a chunked body has no length to check first).
    """

    _limit = 0
    _received = 0
    refused = False
    #: Body bytes, and the end of the request, that arrived while a look-up ran (None: none runs).
    _held: list[bytes] | None = None
    _held_end: tuple[bytes, bytes, bytes] | None = None

    def gotLength(self, length: int | None) -> None:
        channel: Any = self.channel
        channel.headers_done()
        site = self._from_request_line()
        resource = site.getResourceFor(self)
        waiting = resource.lookup(self) if isinstance(resource, LookupRoute) else None
        if waiting is None:
            self._judge(resource, length)
            return
        # Read nothing more until it is known; what the channel already read is held, not parsed.
        self._held = []
        channel.pauseProducing()
        waiting.addCallback(lambda _: self._release(resource, length))

    def _release(self, resource: Resource, length: int | None) -> None:
        held, self._held = self._held or [], None
        end, self._held_end = self._held_end, None
        channel: Any = self.channel
        if channel is None:  # the client left meanwhile (connectionLost lets go of the channel)
            return
        self._judge(resource, length)
        for chunk in held:
            self.handleContentChunk(chunk)
        if end is not None:
            self.requestReceived(*end)  # may finish the request and let go of the channel
        if not self.refused:
            channel.resumeProducing()

    def _judge(self, resource: Resource, length: int | None) -> None:
        """Take the body, or refuse the request, as its route says from the headers."""
        if length == 0:  # no body: every GET, every socket upgrade
            super().gotLength(length)
            return
        try:
            if not isinstance(resource, BodyRoute):
                raise HTTPError(413, ErrorCode.TOO_LARGE, "this route takes no request body")
            resource.check_headers(self)
            self._limit = resource.body_limit(self)
            if self._limit <= 0:
                raise HTTPError(413, ErrorCode.TOO_LARGE, "this request takes no body")
            if length is not None and length > self._limit:  # None: chunked, counted as it comes
                raise HTTPError(413, ErrorCode.TOO_LARGE, f"the body is limited to {self._limit} bytes here")
        except LivetxError as refusal:
            self._refuse(refusal)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
            return
        if self.refused:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._refuse(HTTPError(413, ErrorCode.TOO_LARGE, f"the body is limited to {self._limit} bytes here"))
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._held is not None:
            self._held_end = (command, path, version)
            return
        if not self.refused:
            super().requestReceived(command, path, version)

    def _from_request_line(self) -> Any:
        """What ``requestReceived`` will set, known already: the route depends on it. The Site."""
        channel: Any = self.channel
        self.method, self.uri, self.clientproto = channel._command, channel._path, channel._version
        self.site = channel.site
        self.path, _, query = self.uri.partition(b"?")
        self.args = parse_qs(query, 1) if query else {}  # as requestReceived parses it (any bytes)
        self.prepath = []
        self.postpath = [unquote_to_bytes(p) for p in self.path[1:].split(b"/")]
        return channel.site

    def _refuse(self, refusal: LivetxError) -> None:
        """Answer now and close: the client may still be sending a body nobody will read."""
        self.refused = True
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the answer
        self.channel.persistent = False
        channel: Any = self.channel
        body = channel.site.refusal_body(self, refusal)
        self.setHeader(b"content-length", b"%d" % len(body))
        self.setHeader(b"connection", b"close")
        self.write(body)
        channel.site.log(self)
        channel.loseConnection()


class GuardedChannel(HTTPChannel):
    """An HTTP connection whose request headers must arrive within the Site's timeout in all.

    Twisted's timeout restarts on every byte, so a client sending one byte
    every few seconds (slowloris) would hold a connection forever. Here no
    byte of a request's head restarts it: the clock set when the connection
    opened (or the previous response ended) runs out regardless. Once the
    headers are in, it is the usual idle timeout again (for the body).

    The connection also holds its address's place in
    :class:`~livetx.web.admission.AddressLimit` until it closes, even after
    becoming a WebSocket (see :class:`Upgrade`).
    """

    release: Callable[[], None] | None = None
    _in_headers = True
    _lost: list[Deferred[None]] | None = None

    def notify_lost(self) -> Deferred[None]:
        """Fires once the connection has closed (after writing what was buffered, when closed cleanly)."""
        d: Deferred[None] = Deferred()
        self._lost = [*(self._lost or []), d]
        return d

    def resetTimeout(self) -> None:
        if not self._in_headers:
            super().resetTimeout()

    def headers_done(self) -> None:
        self._in_headers = False

    def requestDone(self, request: Request) -> None:
        self._in_headers = True  # the next request's head gets a fresh, unrestartable clock
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.let_go()
        lost, self._lost = self._lost or [], None
        for d in lost:
            d.callback(None)

    def let_go(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()


class Upgrade(WebSocketResource):
    """Autobahn's resource, passing the connection's address slot on to the socket.

    Autobahn takes the transport away from the HTTP channel, whose
    ``connectionLost`` then never runs: the socket's does, and releases it.
    """

    def render(self, request: Request) -> Any:
        channel: Any = request.channel
        transport: Any = request.transport
        result = super().render(request)
        release = getattr(channel, "release", None)
        if channel.transport is None and release is not None:  # upgraded
            channel.release = None
            protocol: Any = transport.wrappedProtocol if isinstance(transport, ProtocolWrapper) else transport.protocol
            lost = protocol.connectionLost

            def connection_lost(reason: Failure) -> None:
                try:
                    lost(reason)
                finally:
                    release()

            protocol.connectionLost = connection_lost
        return result


def make_site(
    root: Resource, *, admit: Callable[[Any], Callable[[], None] | None], refusal_body: RefusalBody, **kwargs: Any
) -> Site:
    """A Site of guarded requests and channels; ``admit(addr)`` gives a release, or None to refuse.

    ``refusal_body`` writes the answer to a body refused from the headers
    (the web layer's, passed in: the fence imports nothing above it).
    ``timeout`` (a Site argument) is also the deadline for each request's headers.
    """
    return _Site(root, admit, refusal_body, **kwargs)


class _Site(Site):
    protocol = GuardedChannel  # type: ignore[assignment]
    requestFactory = GuardedRequest

    def __init__(
        self, root: Resource, admit: Callable[[Any], Callable[[], None] | None], refusal_body: RefusalBody,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, parsePOSTFormSubmission=False, **kwargs)
        self._admit = admit
        self.refusal_body = refusal_body

    def buildProtocol(self, addr: Any) -> Any:
        release = self._admit(addr)
        if release is None:
            return None  # over the address's limit: Twisted closes the connection
        channel = super().buildProtocol(addr)
        channel.release = release
        return channel


def take_over_producer(transport: IConsumer, producer: IPushProducer) -> None:
    """An upgraded socket's transport is the WebSocket's now: ``producer`` paces it.

    Twisted Web's channel registered itself as the transport's producer when
    the connection opened, and a transport takes one producer at a time.
    """
    transport.unregisterProducer()
    transport.registerProducer(producer, True)
