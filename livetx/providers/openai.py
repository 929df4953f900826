"""OpenAI-compatible services through ``treq``: chat (SSE), speech, transcription.

They work with hosted APIs and with self-hosted servers that speak the same
protocol. All requests share one persistent connection pool. Every call is
cancellable at any moment and cancelling really closes the upstream
connection: that is what makes barge-in free the model at once.

treq builds the requests (JSON and multipart bodies) and reads the bodies.
A turn makes one request per sentence, so what is cheap to keep cheap stays
under treq: its ``HTTPClient`` runs on an ``Agent`` with one endpoint per
upstream origin and a pool of kept-alive connections, each URL reaches treq
parsed and IDNA-encoded once, bodies are read unbuffered (each is read
once), redirects are off (an API does not redirect a POST), no cookies are
kept (an API client authenticates with its key), JSON is encoded and parsed
with orjson, and a request that succeeds writes no log line.
"""

from __future__ import annotations

import io
from http.cookiejar import CookieJar
from typing import Any, Callable, Sequence, TypeVar

import orjson
import treq
from hyperlink import EncodedURL
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IConsumer, IDelayedCall, IProtocol, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from livetx.config import LLMConfig, STTConfig, TTSConfig
from livetx.providers.base import LLMError, Message, ProviderError, STTError, TTSError
from livetx.providers.sse import SSEDecoder, SSEError

_T = TypeVar("_T")

_log = Logger()

_EXCERPT = 300
#: After ``[DONE]`` the body should end at once; a server that keeps it open
#: this long is hung up on rather than left holding a connection.
_DRAIN_SECONDS = 2.0
#: Idle upstream connections kept per host. A turn holds one chat stream and
#: ``[tts] concurrency`` speech requests at once, so 20 busy sessions need
#: about 60; fewer would open (and log) a new connection per sentence.
MAX_PERSISTENT_PER_HOST = 64


def make_http_client(reactor: Any) -> tuple[HTTPClient, HTTPConnectionPool]:
    """One keep-alive pool for every provider: no TCP or TLS handshake per sentence."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
    pool.cachedConnectionTimeout = 60
    agent = Agent.usingEndpointFactory(reactor, _Endpoints(reactor, connect_timeout=10), pool=pool)
    return HTTPClient(agent, cookiejar=_NO_COOKIES, data_to_body_producer=_body), pool


@implementer(IBodyProducer)
class _Bytes:
    """A request body already in memory, written as the request goes out.

    treq's default wraps bytes in a ``FileBodyProducer``, which writes from
    a cooperative task on a later reactor turn: an extra timer, a few
    Deferreds and a delay on every request of a turn.
    """

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


def _body(data: Any) -> IBodyProducer:
    return _Bytes(data) if isinstance(data, bytes) else IBodyProducer(data)


class _NoCookies(CookieJar):
    """A jar that keeps nothing: upstream APIs authenticate by key, not cookie.

    treq sends every request through a cookie agent; the standard library's
    cookie matching cost about a tenth of a text turn's CPU (six requests a
    turn), for cookies no OpenAI-compatible API needs.
    """

    def add_cookie_header(self, request: Any) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


_NO_COOKIES = _NoCookies()


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """One endpoint per upstream origin, made once.

    The Agent asks for an endpoint on every request, even one the pool
    answers with a kept-alive connection, and its default factory makes a
    new ``HostnameEndpoint`` (with IDNA checks of the host) each time.
    """

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


class _Hangup(proxyForInterface(IResponse)):  # type: ignore[misc]
    """A response whose connection can be closed mid-body.

    A ``treq.collect`` cannot be cancelled; this keeps the protocol it hands
    the body to, whose transport is the upstream connection.
    """

    _reader: IProtocol | None = None

    def deliverBody(self, protocol: IProtocol) -> None:
        self._reader = protocol
        self.original.deliverBody(protocol)

    def hang_up(self) -> None:
        transport = getattr(self._reader, "transport", None)
        if transport is not None:
            transport.loseConnection()


class _URI(EncodedURL):
    """A URL already in URI form.

    treq converts every URL it is given to a URI, with IDNA checks of the
    host: a third of its cost per request. Here that was done once.
    """

    _text: str | None = None

    def to_uri(self) -> _URI:
        return self

    def to_text(self, with_password: bool = False) -> str:
        """Rendered once: treq renders the URL again for every request."""
        if with_password:
            return super().to_text(with_password)
        if self._text is None:
            self._text = super().to_text()
        return self._text


class _Upstream:
    """POSTs to one OpenAI-compatible service with a deadline and real cancellation."""

    def __init__(
        self,
        http: HTTPClient,
        clock: IReactorTime,
        base_url: str,
        api_key: str | None,
        timeout: float,
        error: type[ProviderError],
        what: str,
    ) -> None:
        self._http = http
        self._clock = clock
        self._base_url = base_url.rstrip("/")
        self._urls: dict[str, _URI] = {}
        self._api_key = api_key
        self._headers: dict[bytes | str, list[bytes | str]] = (
            {b"authorization": [f"Bearer {api_key}".encode("utf-8")]} if api_key else {}
        )
        self._json_headers = {**self._headers, b"content-type": [b"application/json"]}
        self._timeout = timeout
        self._error = error
        self._what = what

    def url(self, path: str) -> _URI:
        """``path`` under the base URL, parsed and IDNA-encoded once per path."""
        url = self._urls.get(path)
        if url is None:
            uri = EncodedURL.from_text(self._base_url + path).to_uri().to_text()
            url = self._urls[path] = _URI.from_text(uri)
        return url

    def post(
        self, path: str, read: Callable[[_Hangup], Deferred[_T]], *, json: Any = None, **body: Any
    ) -> Deferred[_T]:
        """POST ``json`` or ``body`` (treq's ``data``, ``files``); ``read`` a 2xx response.

        An error status fails with an excerpt of its body. A cancel or the
        deadline closes the connection at any stage: before the headers
        through the Agent, after them by hanging up on the body.
        """
        response: list[_Hangup] = []
        cancelled: list[bool] = []
        headers = self._headers
        if json is not None:  # orjson: the chat request carries the whole history
            body["data"], headers = orjson.dumps(json), self._json_headers
        # cookies: a jar, so treq does not build an empty one from None per request
        request = self._http.post(
            self.url(path), headers=headers, cookies=_NO_COOKIES, allow_redirects=False,
            unbuffered=True, **body,
        )

        def cancel(_: Deferred[_T]) -> None:
            cancelled.append(True)
            if response:
                response[0].hang_up()
            else:
                request.cancel()

        result: Deferred[_T] = Deferred(cancel)

        def respond(answer: IResponse) -> Deferred[Any]:
            response.append(_Hangup(answer))
            if 200 <= answer.code < 300:
                return read(response[0])
            excerpt = bytearray()
            reading = treq.collect(response[0], lambda b: excerpt.extend(b[: _EXCERPT - len(excerpt)]))
            # even if the error body is cut short, the status is the news
            return reading.addBoth(lambda _: self._status_error(bytes(excerpt), answer.code))

        def settle(outcome: Any) -> None:
            if result.called:  # a cancel has already errbacked it
                return
            if cancelled:  # however the request noticed it, it was a cancel
                result.errback(Failure(CancelledError()))
            elif isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

        request.addCallback(respond).addBoth(settle)
        return self._with_deadline(result, path)

    def stream(self, path: str, on_data: Callable[[bytes], bool], *, json: Any) -> Deferred[None]:
        """POST and feed each body chunk to ``on_data`` as it arrives.

        ``on_data`` returns true once the payload is complete (``[DONE]``):
        the result fires then, and the rest of the body drains so the
        connection can go back to the pool.
        """

        def read(response: _Hangup) -> Deferred[None]:
            complete: Deferred[None] = Deferred()
            drain: list[IDelayedCall] = []

            def feed(chunk: bytes) -> None:
                if not drain and on_data(chunk):
                    drain.append(self._clock.callLater(_DRAIN_SECONDS, response.hang_up))
                    complete.callback(None)

            def ended(outcome: Failure | None) -> None:
                if drain and drain[0].active():
                    drain[0].cancel()
                if complete.called:  # a drain cut short is no news
                    return
                if isinstance(outcome, Failure):
                    complete.errback(outcome)
                else:
                    complete.callback(None)

            treq.collect(response, feed).addBoth(ended)
            return complete

        return self.post(path, read, json=json)

    def _with_deadline(self, d: Deferred[_T], path: str) -> Deferred[_T]:
        expired: list[bool] = []
        started = self._clock.seconds()

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self._clock.callLater(self._timeout, expire)

        def explain(failure: Failure) -> Failure:
            if failure.check(CancelledError):
                if expired:
                    raise self._error(f"{self._what} timed out after {self._timeout:g} s")
                return failure
            if failure.check(ProviderError):
                return failure
            raise self._error(f"cannot reach the {self._what}: {_reason(failure)}")

        def done(outcome: Any) -> Any:
            if timer.active():
                timer.cancel()
            if isinstance(outcome, Failure):  # not every success: that is a log line per sentence
                _log.debug(
                    "{what} POST {path} failed after {elapsed:.3f} s: {reason}",
                    what=self._what, path=path, elapsed=self._clock.seconds() - started,
                    reason=outcome.getErrorMessage(),
                )
            return outcome

        return d.addErrback(explain).addBoth(done)

    def _status_error(self, body: bytes, code: int) -> None:
        excerpt = body.decode("utf-8", "replace").strip()
        if self._api_key:  # some servers echo the credentials they rejected
            excerpt = excerpt.replace(self._api_key, "***")
        raise self._error(f"{self._what} answered HTTP {code}: {excerpt}")


class OpenAIChat:
    """``POST /chat/completions`` with ``stream: true``; each delta as it arrives."""

    def __init__(self, config: LLMConfig, http: HTTPClient, reactor: IReactorTime) -> None:
        self.model = config.model
        self._upstream = _Upstream(
            http, reactor, config.base_url, config.api_key, config.timeout, LLMError, "chat model"
        )

    def stream(self, messages: Sequence[Message], on_delta: Callable[[str], None]) -> Deferred[None]:
        decoder = SSEDecoder()
        events: list[bool] = []

        def on_data(chunk: bytes) -> bool:
            try:
                events_now = decoder.feed(chunk)
            except SSEError as e:
                raise LLMError(f"chat model sent {e}") from None
            for event in events_now:
                events.append(True)
                if event.data.strip() == "[DONE]":
                    return True
                for text in _delta_texts(event.data):
                    on_delta(text)
            return False

        def check(_: None) -> None:
            if not events:  # a 200 that is not an event stream (an HTML page, say)
                raise LLMError("chat model sent no event stream")

        request = {"model": self.model, "messages": list(messages), "stream": True}
        return self._upstream.stream("/chat/completions", on_data, json=request).addCallback(check)


def _reason(failure: Failure) -> str:
    """A failure's text for a client; twisted.web wraps its causes (``ResponseFailed``)."""
    reasons = getattr(failure.value, "reasons", None)
    if isinstance(reasons, list) and reasons:
        return "; ".join(r.getErrorMessage() if isinstance(r, Failure) else str(r) for r in reasons)
    return failure.getErrorMessage()


def _delta_texts(data: str) -> list[str]:
    """The reply text in one chat-completion chunk (``reasoning_content`` is not spoken)."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise LLMError("chat model sent an event that is not JSON") from None
    if not isinstance(payload, dict):
        raise LLMError("chat model sent an event that is not a JSON object")
    if "error" in payload:
        raise LLMError(f"chat model error: {str(payload['error'])[:_EXCERPT]}")
    texts = []
    for choice in payload.get("choices") or ():
        content = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
        if isinstance(content, str) and content:
            texts.append(content)
    return texts


class OpenAISpeech:
    """``POST /audio/speech``: one sentence in, one audio file out."""

    name = "openai_tts_api"

    def __init__(self, config: TTSConfig, http: HTTPClient, reactor: IReactorTime) -> None:
        self._config = config
        self._upstream = _Upstream(
            http, reactor, config.base_url, config.api_key, config.timeout, TTSError, "speech service"
        )

    def synthesize(self, text: str) -> Deferred[bytes]:
        c = self._config
        request = {"model": c.model or "tts-1", "input": text, "voice": c.voice or "alloy",
                   "response_format": c.response_format}
        return self._upstream.post("/audio/speech", self._audio, json=request)

    def _audio(self, response: IResponse) -> Deferred[bytes]:
        kind = (response.headers.getRawHeaders(b"content-type") or [b""])[-1].decode("latin-1")
        return treq.content(response).addCallback(self._check, kind.split(";")[0].strip().lower())

    def _check(self, audio: bytes, kind: str) -> bytes:
        """Only audio goes on to the client, never (say) a proxy's HTML page."""
        if not audio:
            raise TTSError("speech service returned no audio")
        if kind.startswith("text/") or kind.endswith(("json", "xml")):
            raise TTSError(f"speech service sent {kind}, not audio")
        if self._config.response_format == "wav" and not (audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"):
            raise TTSError("speech service sent no WAV audio")
        return audio


class OpenAITranscriber:
    """``POST /audio/transcriptions`` with the segment as a multipart WAV upload."""

    name = "openai_stt_api"

    def __init__(self, config: STTConfig, http: HTTPClient, reactor: IReactorTime) -> None:
        self._config = config
        self._upstream = _Upstream(
            http, reactor, config.base_url, config.api_key, config.timeout, STTError,
            "transcription service",
        )

    def transcribe(self, wav: bytes) -> Deferred[str]:
        fields = {"model": self._config.model or "whisper-1"}
        if self._config.language:
            fields["language"] = self._config.language
        files = {"file": ("audio.wav", "audio/wav", io.BytesIO(wav))}
        body = self._upstream.post("/audio/transcriptions", treq.content, data=fields, files=files)
        return body.addCallback(self._text)

    @staticmethod
    def _text(body: bytes) -> str:
        try:
            text = orjson.loads(body)["text"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise STTError("transcription service sent no text") from None
        if not isinstance(text, str):
            raise STTError("transcription service sent no text")
        return text
