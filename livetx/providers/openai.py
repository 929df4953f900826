"""OpenAI-compatible services over Twisted's ``Agent``: chat (SSE), speech, transcription.

They work with hosted APIs and with self-hosted servers that speak the same
protocol. All requests share one persistent connection pool. Every call is
cancellable at any moment and cancelling really closes the upstream
connection: that is what makes barge-in free the model at once.

The plain ``Agent`` rather than treq's ``HTTPClient``: a turn makes one
request per sentence, and treq re-parses the URL (with IDNA checks), wraps
the agent in cookie, redirect and decoder agents and writes the body from a
cooperator task on every request. Here each URL is parsed once, and a body
already in memory is written at once.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from hyperlink import URL
from treq.multipart import MultiPartProducer
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from livetx.config import LLMConfig, STTConfig, TTSConfig
from livetx.providers.base import LLMError, Message, ProviderError, STTError, TTSError
from livetx.providers.sse import SSEDecoder

_log = Logger()

_EXCERPT = 300
#: After ``[DONE]`` the body should end at once; a server that keeps it open
#: this long is hung up on rather than left holding a connection.
_DRAIN_SECONDS = 2.0
#: Idle upstream connections kept per host. A turn holds one chat stream and
#: ``[tts] concurrency`` speech requests at once, so 20 busy sessions need
#: about 60; fewer would open (and log) a new connection per sentence.
MAX_PERSISTENT_PER_HOST = 64


def make_http_client(reactor: Any) -> tuple[IAgent, HTTPConnectionPool]:
    """One keep-alive pool for every provider: no TCP or TLS handshake per sentence."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
    pool.cachedConnectionTimeout = 60
    return Agent.usingEndpointFactory(reactor, _Endpoints(reactor, connect_timeout=10), pool=pool), pool


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


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory, written as soon as the connection is ready."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Everything was written at once: nothing to pause."""

    def resumeProducing(self) -> None:
        """Everything was written at once: nothing to resume."""

    def stopProducing(self) -> None:
        """Everything was written at once: nothing to stop."""


class _BodyReader(Protocol):
    """Hands each body chunk on as it arrives, and can hang up mid-body.

    ``on_data`` returns true once the payload is complete (``[DONE]``): the
    result fires then, and the rest of the body drains so the connection can
    go back to the pool.
    """

    def __init__(
        self, on_data: Callable[[bytes], bool | None], finished: Deferred[None], clock: IReactorTime
    ) -> None:
        self._on_data = on_data
        self._finished = finished
        self._clock = clock
        self._drain: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._finished.called:  # complete or failed: the rest is ignored
            return
        try:
            done = self._on_data(data)
        except Exception:
            failure = Failure()
            self.abort()
            self._settle(failure)
            return
        if done:
            self._drain = self._clock.callLater(_DRAIN_SECONDS, self.abort)
            self._settle(None)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._drain is not None and self._drain.active():
            self._drain.cancel()
        if reason.check(ResponseDone, PotentialDataLoss):
            self._settle(None)
        else:
            self._settle(reason)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def _settle(self, outcome: Failure | None) -> None:
        if self._finished.called:
            return
        if outcome is None:
            self._finished.callback(None)
        else:
            self._finished.errback(outcome)


class _Upstream:
    """POSTs to one OpenAI-compatible service with a deadline and real cancellation."""

    def __init__(
        self,
        http: IAgent,
        clock: IReactorTime,
        base_url: str,
        api_key: str | None,
        timeout: float,
        error: type[ProviderError],
        what: str,
    ) -> None:
        self._agent = http
        self._clock = clock
        self._base_url = base_url.rstrip("/")
        self._urls: dict[str, bytes] = {}
        self._api_key = api_key
        self._auth = [f"Bearer {api_key}".encode("utf-8")] if api_key else []
        self._timeout = timeout
        self._error = error
        self._what = what

    def url(self, path: str) -> bytes:
        """The request URI of ``path``, parsed and IDNA-encoded once per path."""
        url = self._urls.get(path)
        if url is None:
            url = URL.from_text(self._base_url + path).to_uri().to_text().encode("ascii")
            self._urls[path] = url
        return url

    def post_json(self, path: str, on_data: Callable[[bytes], bool | None], payload: Any) -> Deferred[None]:
        body = json.dumps(payload).encode("utf-8")
        return self.post(path, on_data, _Body(body), b"application/json")

    def post_form(
        self, path: str, on_data: Callable[[bytes], bool | None], fields: dict[str, str], files: dict[str, Any]
    ) -> Deferred[None]:
        form = MultiPartProducer([*fields.items(), *files.items()])
        return self.post(path, on_data, form, b"multipart/form-data; boundary=" + form.boundary)

    def post(
        self, path: str, on_data: Callable[[bytes], bool | None], body: IBodyProducer, content_type: bytes
    ) -> Deferred[None]:
        """Send the request; feed a 2xx body to ``on_data``; fire when it ends.

        Error bodies go through the same reader, so a cancel or the deadline
        closes the connection whatever stage the response is at.
        """
        reader: list[_BodyReader] = []
        cancelled: list[bool] = []
        headers = Headers({b"content-type": [content_type]})
        if self._auth:
            headers.setRawHeaders(b"authorization", self._auth)
        request = self._agent.request(b"POST", self.url(path), headers, body)

        def cancel(_: Deferred[None]) -> None:
            cancelled.append(True)
            if reader:
                reader[0].abort()
            else:
                request.cancel()

        result: Deferred[None] = Deferred(cancel)

        def respond(response: IResponse) -> Deferred[Any]:
            failed = not 200 <= response.code < 300
            excerpt = bytearray()
            sink = (lambda b: excerpt.extend(b[: _EXCERPT - len(excerpt)])) if failed else on_data
            finished: Deferred[Any] = Deferred()
            reader.append(_BodyReader(sink, finished, self._clock))
            response.deliverBody(reader[0])
            if failed:  # even if the error body is cut short, the status is the news
                finished.addBoth(lambda _: self._status_error(bytes(excerpt), response.code))
            return finished

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

    def _with_deadline(self, d: Deferred[None], path: str) -> Deferred[None]:
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
            raise self._error(f"cannot reach the {self._what}: {failure.getErrorMessage()}")

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


def _collect(post: Callable[[Callable[[bytes], None]], Deferred[None]]) -> Deferred[bytes]:
    """Run ``post`` with a sink for the body; fire with the whole body."""
    chunks: list[bytes] = []
    return post(chunks.append).addCallback(lambda _: b"".join(chunks))


class OpenAIChat:
    """``POST /chat/completions`` with ``stream: true``; each delta as it arrives."""

    def __init__(self, config: LLMConfig, http: IAgent, reactor: IReactorTime) -> None:
        self.model = config.model
        self._upstream = _Upstream(
            http, reactor, config.base_url, config.api_key, config.timeout, LLMError, "chat model"
        )

    def stream(self, messages: Sequence[Message], on_delta: Callable[[str], None]) -> Deferred[None]:
        decoder = SSEDecoder()
        events: list[bool] = []

        def on_data(chunk: bytes) -> bool:
            for event in decoder.feed(chunk):
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
        return self._upstream.post_json("/chat/completions", on_data, request).addCallback(check)


def _delta_texts(data: str) -> list[str]:
    """The reply text in one chat-completion chunk (``reasoning_content`` is not spoken)."""
    try:
        payload = json.loads(data)
    except ValueError:
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

    def __init__(self, config: TTSConfig, http: IAgent, reactor: IReactorTime) -> None:
        self._config = config
        self._upstream = _Upstream(
            http, reactor, config.base_url, config.api_key, config.timeout, TTSError, "speech service"
        )

    def synthesize(self, text: str) -> Deferred[bytes]:
        c = self._config
        request = {"model": c.model or "tts-1", "input": text, "voice": c.voice or "alloy",
                   "response_format": c.response_format}
        speech = _collect(lambda sink: self._upstream.post_json("/audio/speech", sink, request))
        return speech.addCallback(self._check)

    @staticmethod
    def _check(audio: bytes) -> bytes:
        if not audio:
            raise TTSError("speech service returned no audio")
        return audio


class OpenAITranscriber:
    """``POST /audio/transcriptions`` with the segment as a multipart WAV upload."""

    name = "openai_stt_api"

    def __init__(self, config: STTConfig, http: IAgent, reactor: IReactorTime) -> None:
        self._config = config
        self._upstream = _Upstream(
            http, reactor, config.base_url, config.api_key, config.timeout, STTError,
            "transcription service",
        )

    def transcribe(self, wav: bytes) -> Deferred[str]:
        fields = {"model": self._config.model or "whisper-1"}
        if self._config.language:
            fields["language"] = self._config.language
        files = {"file": ("audio.wav", "audio/wav", _Body(wav))}
        body = _collect(lambda sink: self._upstream.post_form("/audio/transcriptions", sink, fields, files))
        return body.addCallback(self._text)

    @staticmethod
    def _text(body: bytes) -> str:
        try:
            text = json.loads(body)["text"]
        except (ValueError, KeyError, TypeError):
            raise STTError("transcription service sent no text") from None
        if not isinstance(text, str):
            raise STTError("transcription service sent no text")
        return text
