"""The library internals livetx/fences/ leans on still have the shape it relies on.

Each check names what an upgrade would have to keep; when one fails, read
the matching module in livetx/fences/ before raising the cap in setup.cfg.
"""

from __future__ import annotations

import inspect
from http.cookiejar import CookieJar
from typing import Any, Callable

import numpy
import treq.client
import txredisapi
from autobahn.twisted.websocket import WebSocketAdapterProtocol, WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from faster_whisper import WhisperModel
from hyperlink import EncodedURL
from transitions import Machine
from transitions.core import Event
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, LogPublisher, eventAsText
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from livetx.fences import faster_whisper as whisper_fence
from livetx.fences.autobahn import QuietIO, close_with_code, settings_from_factory
from livetx.fences.twisted_logger import name_every_event
from livetx.fences.twisted_usage import usage_without
from livetx.fences.treq import Endpoints, NoCookies, PreparedURL, make_http_client
from livetx.errors import ErrorCode
from livetx.fences.transitions import trigger
from livetx.fences.twisted_app import RaisingEndpointService
from livetx.fences.twisted_web import GuardedChannel, GuardedRequest, make_site, take_over_producer
from livetx.fences.txredisapi import Subscriptions, lost_after_connecting, reconnect_every
from livetx.web.flow import SendBuffer
from livetx.web.replies import HTTPError, error_body


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def body(function: Callable[..., Any]) -> str:
    return inspect.getsource(function)


# -- Autobahn ------------------------------------------------------------------


def test_autobahn_copies_the_settings_it_lists_in_config_attrs() -> None:
    names = WebSocketServerProtocol.CONFIG_ATTRS
    assert names and all(isinstance(n, str) for n in names)
    factory = WebSocketServerFactory()
    missing = [n for n in names if not hasattr(factory, n)]
    assert missing == [], "settings_from_factory reads these from the factory"
    assert "self.CONFIG_ATTRS" in body(WebSocketProtocol._connectionMade)


def test_autobahn_reads_through_data_received_into_the_private_reader() -> None:
    assert parameters(WebSocketProtocol._dataReceived) == ["self", "data"]
    assert "self._dataReceived(data)" in body(WebSocketAdapterProtocol.dataReceived)


def test_autobahn_send_data_keeps_the_queue_and_traffic_counter_quiet_io_bypasses() -> None:
    assert parameters(WebSocketProtocol.sendData) == ["self", "data", "sync", "chopsize"]
    source = body(WebSocketProtocol.sendData)
    for name in ("send_queue", "trafficStats.outgoingOctetsWireLevel", "logOctets", "self.transport.write"):
        assert name in source, name


def test_autobahn_send_close_frame_takes_any_code() -> None:
    assert parameters(WebSocketProtocol.sendCloseFrame) == ["self", "code", "reasonUtf8", "isReply"]


@settings_from_factory
class _Fenced(QuietIO):
    pass


def test_fenced_socket_reads_settings_from_its_factory_and_writes_plainly() -> None:
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(autoFragmentSize=0, maxMessagePayloadSize=1234)
    factory.protocol = _Fenced
    protocol = factory.buildProtocol(None)
    assert not _Fenced.CONFIG_ATTRS
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert protocol.maxMessagePayloadSize == 1234  # read from the factory on first use
    assert protocol.send_queue is not None and protocol.trafficStats is not None
    protocol.state = protocol.STATE_OPEN
    before = protocol.trafficStats.outgoingOctetsWireLevel
    protocol.sendData(b"abc")
    assert transport.value() == b"abc"
    assert protocol.trafficStats.outgoingOctetsWireLevel == before + 3
    close_with_code(protocol, 1008, "x" * 200)
    # A close frame (0x88) of 125 bytes: code 1008, and the reason cut to 123 bytes.
    assert transport.value()[3:7] == b"\x88\x7d\x03\xf0"


# -- treq, hyperlink, twisted.web client ---------------------------------------


def test_treq_client_takes_the_jar_and_body_producer_the_fence_gives_it() -> None:
    assert {"agent", "cookiejar", "data_to_body_producer"} <= set(parameters(treq.client.HTTPClient.__init__))
    request = treq.client.HTTPClient.request
    assert {"cookies", "allow_redirects", "unbuffered"} <= set(parameters(request))
    source = body(request)
    assert "EncodedURL" in source and ".to_uri().to_text()" in source, "PreparedURL relies on both"
    assert "isinstance(cookies, CookieJar)" in source, "NO_COOKIES is passed as a ready jar"


def test_cookie_jar_methods_no_cookies_overrides() -> None:
    assert parameters(CookieJar.add_cookie_header) == ["self", "request"]
    assert parameters(CookieJar.extract_cookies) == ["self", "response", "request"]
    assert issubclass(NoCookies, CookieJar)


def test_hyperlink_url_conversions_prepared_url_overrides() -> None:
    assert parameters(EncodedURL.to_uri) == ["self"]
    assert parameters(EncodedURL.to_text) == ["self", "with_password"]
    url = PreparedURL.from_text("http://example.com/v1/chat")
    assert url.to_uri() is url and url.to_text() == "http://example.com/v1/chat"


def test_agent_takes_an_endpoint_factory_with_a_pool() -> None:
    assert {"reactor", "endpointFactory", "pool"} <= set(parameters(Agent.usingEndpointFactory))
    assert IAgentEndpointFactory.implementedBy(Endpoints)
    assert "maxPersistentPerHost" in vars(HTTPConnectionPool)
    client, pool = make_http_client(MemoryReactorClock())
    assert isinstance(client, treq.client.HTTPClient) and isinstance(pool, HTTPConnectionPool)


def test_twisted_tcp_port_accepts_number_accepts_per_read() -> None:
    from twisted.internet import tcp

    from livetx.fences.twisted_tcp import accept_one_at_a_time

    source = inspect.getsource(tcp.Port)
    assert "self.numberAccepts = 100" in source and "numAccepts = self.numberAccepts" in source
    port = tcp.Port(0, None)
    accept_one_at_a_time(port)
    assert port.numberAccepts == 1


def test_usage_lists_the_long_options_table_it_parses_with() -> None:
    class Two(usage.Options):
        optFlags = [["shown", None, "In the help."], ["hidden", None, "Not in it."]]

    assert "for opt in self.longOpt:" in body(usage.Options.getUsage)
    assert "--hidden" not in usage_without(Two(), {"hidden"}) and "--shown" in usage_without(Two(), {"hidden"})
    options = Two()
    options.parseOptions(["--hidden"])
    assert options["hidden"] and "--hidden" in options.getUsage()  # parsed still, and the table restored


def test_the_log_publisher_hands_one_event_to_its_observers_in_the_order_added() -> None:
    publisher = LogPublisher()
    name_every_event(publisher, "worker", 1)
    seen: list[dict[str, Any]] = []
    publisher.addObserver(seen.append)
    Logger(namespace="livetx.test", observer=publisher).info("hello {who}", who="there")
    publisher({"log_system": "HTTPChannel,0", "log_format": "legacy", "log_time": 0.0})
    assert [event["worker"] for event in seen] == [1, 1]
    assert eventAsText(seen[0], includeTimestamp=False) == "[worker-1 livetx.test#info] hello there"
    assert eventAsText(seen[1], includeTimestamp=False) == "[worker-1 HTTPChannel,0] legacy"
    assert "for observer in self._observers" in body(LogPublisher.__call__)


# -- twisted.web -----------------------------------------------------------------
# livetx/fences/twisted_web.py judges a request body from its headers: the
# request line is then known only to the channel, and Twisted's timeout is
# restarted through resetTimeout.


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
    site = make_site(Form(), admit=lambda addr: lambda: None, refusal_body=error_body)
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
    site = make_site(Form(), admit=lambda addr: None, refusal_body=error_body)
    assert site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1)) is None  # Twisted then drops the connection


def test_bytes_of_a_head_do_not_restart_the_timeout_but_the_body_does() -> None:
    """Twisted restarts its timeout in ``dataReceived`` through ``resetTimeout``, which the channel overrides."""
    clock = Clock()
    site = make_site(Form(), admit=lambda addr: lambda: None, refusal_body=error_body, timeout=1.0, reactor=clock)
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


class Looked(Form):
    """A route that must look something up before it judges a request (a key this node has not seen)."""

    def __init__(self, allow: bool) -> None:
        super().__init__()
        self.waiting: Deferred[None] = Deferred()
        self.allow = allow

    def lookup(self, request: Request) -> Deferred[None]:
        return self.waiting

    def check_headers(self, request: Request) -> None:
        if not self.allow:
            raise HTTPError(401, ErrorCode.UNAUTHORIZED, "Invalid API key")

    def render_POST(self, request: Request) -> bytes:
        content = request.content
        assert content is not None
        return b"body=" + content.read()


def test_a_request_waits_for_its_routes_lookup_reading_nothing_more() -> None:
    """Pausing the channel and holding what it had read are what GuardedRequest relies on."""
    for allow in (True, False):
        route = Looked(allow)
        site = make_site(route, admit=lambda addr: lambda: None, refusal_body=error_body)
        channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
        channel.callLater = Clock().callLater
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        assert transport.value() == b"" and transport.producerState == "paused"
        route.waiting.callback(None)
        if allow:
            assert transport.value().endswith(b"body=hello") and transport.producerState == "producing"
        else:
            assert transport.value().startswith(b"HTTP/1.1 401 ") and transport.disconnecting


def test_the_channel_is_its_transports_producer_until_the_socket_takes_over() -> None:
    transport, channel = StringTransport(), HTTPChannel()
    channel.makeConnection(transport)
    assert transport.producer is channel and transport.streaming
    buffer = SendBuffer(100)
    take_over_producer(transport, buffer)  # StringTransport refuses a second producer, as TCP's does
    assert transport.producer is buffer and transport.streaming


# -- Twisted's application services ---------------------------------------------


def test_an_endpoint_service_raises_when_told_to_by_its_private_flag() -> None:
    assert "self._raiseSynchronously" in body(StreamServerEndpointService.privilegedStartService)
    assert RaisingEndpointService._raiseSynchronously is True


# -- transitions ------------------------------------------------------------------


def test_an_event_fires_on_a_model_its_machine_was_never_given() -> None:
    assert parameters(Event.trigger)[:2] == ["self", "model"]
    machine = Machine(model=None, states=["a", "b"], transitions=[
        {"trigger": "go", "source": "a", "dest": "b", "conditions": "ready"}], initial="a",
        auto_transitions=False, send_event=True)

    class Model:
        state = "a"

        def ready(self, event: Any) -> bool:
            return bool(event.kwargs["ok"])

    model = Model()
    assert trigger(machine, "go", model, ok=False) is False and model.state == "a"
    assert trigger(machine, "go", model, ok=True) is True and model.state == "b"
    assert not hasattr(model, "go") and not hasattr(model, "is_a")  # nothing bound to it


# -- txredisapi -------------------------------------------------------------------


def test_txredisapi_pool_and_factory_keep_the_shape_the_redis_client_reads() -> None:
    pool = txredisapi.lazyConnectionPool("127.0.0.1", 1, poolsize=1, reconnect=False)
    try:
        factory = pool._factory
        assert isinstance(factory, txredisapi.RedisFactory)
        assert factory.size == 0 and factory.deferred is not None and not lost_after_connecting(pool)
    finally:
        pool.disconnect()
    source = body(txredisapi.RedisFactory.addConnection)
    assert "self.deferred = None" in source and "self.size = len(self.pool)" in source
    assert "self.size = len(self.pool)" in body(txredisapi.RedisFactory.delConnection)
    assert parameters(Subscriptions.addConnection) == parameters(txredisapi.SubscriberFactory.addConnection)
    assert parameters(Subscriptions.delConnection) == parameters(txredisapi.SubscriberFactory.delConnection)
    assert "addConnection" in body(txredisapi.RedisFactory._connectionReady)


def test_txredisapi_backoff_is_read_from_the_factory_on_every_retry() -> None:
    pool = txredisapi.lazyConnectionPool("127.0.0.1", 1, poolsize=1, reconnect=False)
    try:
        subscriber = Subscriptions()
        reconnect_every(1.0, 0.1, pool, subscriber)
        for factory in (pool._factory, subscriber):
            factory.jitter = 0
            assert [factory.retryDelay(attempt) for attempt in (1, 2, 3, 9)] == [0.1, 0.2, 0.4, 1.0]
    finally:
        pool.disconnect()


# -- faster-whisper ----------------------------------------------------------------


def test_faster_whisper_pads_each_window_and_encodes_it_through_the_method_the_fence_overrides() -> None:
    source = body(WhisperModel.generate_segments)
    assert source.index("segment = pad_or_trim(segment)") < source.index("encoder_output = self.encode(segment)")
    assert parameters(WhisperModel.encode) == parameters(whisper_fence.ShortWindowModel.encode) == ["self", "features"]


def test_a_short_window_keeps_the_audio_and_two_seconds_of_padding() -> None:
    def heard(frames: int) -> Any:
        features = numpy.zeros((80, 3000), dtype=numpy.float32)
        features[:, :frames] = -0.5
        return features

    assert whisper_fence.window(heard(800)).shape == (80, 1000)
    assert whisper_fence.window(heard(801)).shape == (80, 2000)  # less than 2 s of padding left in 10 s
    assert whisper_fence.window(heard(1800)).shape == (80, 2000)
    long = heard(1801)
    assert whisper_fence.window(long) is long  # the 30 s window, untouched
    assert whisper_fence.window(heard(300)[None]).shape == (1, 80, 1000)  # a batch of one


def test_the_model_encodes_a_short_window_only_inside_short_windows(monkeypatch: Any) -> None:
    encoded: list[tuple[int, ...]] = []
    monkeypatch.setattr(WhisperModel, "encode", lambda self, features: encoded.append(features.shape))
    model = whisper_fence.ShortWindowModel.__new__(whisper_fence.ShortWindowModel)  # no weights needed
    features = numpy.zeros((80, 3000), dtype=numpy.float32)
    features[:, :500] = 1.0
    model.encode(features)
    with whisper_fence.short_windows():
        model.encode(features)
    model.encode(features)
    assert encoded == [(80, 3000), (80, 1000), (80, 3000)]


def test_faster_whisper_caps_new_tokens_and_reports_each_segments_tokens_and_compression() -> None:
    """The loop check (livetx.providers.whisper) passes ``max_new_tokens`` and reads these fields."""
    from faster_whisper.transcribe import Segment

    assert "max_new_tokens" in parameters(WhisperModel.transcribe)
    assert {"text", "tokens", "compression_ratio"} <= set(Segment.__dataclass_fields__)


def test_a_window_longer_than_the_last_is_picked_and_reported(monkeypatch: Any) -> None:
    monkeypatch.setattr(WhisperModel, "encode", lambda self, features: None)
    model = whisper_fence.ShortWindowModel.__new__(whisper_fence.ShortWindowModel)
    features = numpy.zeros((80, 3000), dtype=numpy.float32)
    features[:, :500] = 1.0
    heard = []
    for longer_than in (0, 1000, 2000):
        with whisper_fence.short_windows(longer_than):
            assert whisper_fence.encoded() == 0
            model.encode(features)
            heard.append(whisper_fence.encoded())
    assert heard == [1000, 2000, 3000]
