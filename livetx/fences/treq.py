"""treq, hyperlink and twisted.web client internals that livetx's upstream requests lean on.

A turn makes one request per sentence, so what is cheap to keep cheap
stays under treq. Why each piece exists, in short (benchmarks/RESULTS.md,
"Why the code is shaped this way", says how much each saves):

- :class:`Body`: treq's default wraps bytes in a ``FileBodyProducer``,
  which writes from a cooperative task on a later reactor turn.
- :class:`NoCookies`: treq sends every request through a cookie agent; the
  standard library's cookie matching is costly, for cookies no
  OpenAI-compatible API needs (they authenticate by key).
- :class:`Endpoints`: the Agent asks for an endpoint on every request, even
  one the pool answers, and its default factory makes a new
  ``HostnameEndpoint`` (with IDNA checks of the host) each time.
- :class:`PreparedURL`: treq converts every URL it is given to a URI, with
  IDNA checks, and renders it again; here that is done once per path.
- :class:`Hangup`: a ``treq.collect`` cannot be cancelled; this keeps the
  protocol the body is delivered to, whose transport is the connection.
"""

from __future__ import annotations

from http.cookiejar import CookieJar
from typing import Any, cast

from hyperlink import EncodedURL
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IConsumer, IProtocol, IStreamClientEndpoint
from twisted.python.components import proxyForInterface
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

#: Idle upstream connections kept per host. A turn holds one chat stream and
#: ``[tts] concurrency`` speech requests at once, so 20 busy sessions need
#: about 60; fewer would open (and log) a new connection per sentence.
MAX_PERSISTENT_PER_HOST = 64


def make_http_client(reactor: Any) -> tuple[HTTPClient, HTTPConnectionPool]:
    """One keep-alive pool for every provider: no TCP or TLS handshake per sentence."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
    pool.cachedConnectionTimeout = 60
    agent = Agent.usingEndpointFactory(reactor, Endpoints(reactor, connect_timeout=10), pool=pool)
    # treq annotates the jar as its own CookieJar subclass; it only merges into and reads it.
    client = HTTPClient(agent, cookiejar=NO_COOKIES, data_to_body_producer=body_producer)  # type: ignore[arg-type]
    return client, pool


@implementer(IBodyProducer)
class Body:
    """A request body already in memory, written as the request goes out."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def body_producer(data: Any) -> IBodyProducer:
    """treq's ``data_to_body_producer``: bytes as a :class:`Body`, anything else as treq would."""
    return Body(data) if isinstance(data, bytes) else IBodyProducer(data)


class NoCookies(CookieJar):
    """A jar that keeps nothing: upstream APIs authenticate by key, not cookie."""

    def add_cookie_header(self, request: Any) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


#: Passed with each request too, so treq does not build an empty jar from None per request.
NO_COOKIES = NoCookies()


@implementer(IAgentEndpointFactory)
class Endpoints:
    """One endpoint per upstream origin, made once."""

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout
        self._tls = BrowserLikePolicyForHTTPS()
        self._made: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._made.get(key)
        if endpoint is None:
            if uri.scheme not in (b"http", b"https"):
                raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
            endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port, timeout=self._timeout)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
            self._made[key] = endpoint
        return endpoint


class Hangup(proxyForInterface(IResponse)):  # type: ignore[misc]
    """A response whose connection can be closed mid-body."""

    _reader: IProtocol | None = None

    def deliverBody(self, protocol: IProtocol) -> None:
        self._reader = protocol
        self.original.deliverBody(protocol)

    def hang_up(self) -> None:
        transport = getattr(self._reader, "transport", None)
        if transport is not None:
            transport.loseConnection()


def prepared_url(text: str) -> PreparedURL:
    """``text`` parsed, IDNA-encoded and in URI form, for every request to it."""
    uri = EncodedURL.from_text(text).to_uri().to_text()
    return cast(PreparedURL, PreparedURL.from_text(uri))


class PreparedURL(EncodedURL):
    """A URL already in URI form, rendered once."""

    _text: str | None = None

    def to_uri(self) -> PreparedURL:
        return self

    def to_text(self, with_password: bool = False) -> str:
        """Rendered once: treq renders the URL again for every request."""
        if with_password:
            return super().to_text(with_password)
        if self._text is None:
            self._text = super().to_text()
        return self._text
