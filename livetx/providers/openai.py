"""OpenAI-compatible services through ``treq``: chat (SSE), speech, transcription.

They work with hosted APIs and with self-hosted servers that speak the same
protocol. All requests share one persistent connection pool. Every call is
cancellable at any moment and cancelling really closes the upstream
connection: that is what makes barge-in free the model at once.

treq builds the requests (JSON and multipart bodies) and reads the bodies,
on the client :func:`livetx.fences.treq.make_http_client` tunes: one
endpoint per upstream origin, a pool of kept-alive connections, URLs parsed
once, no cookies. Here bodies are read unbuffered (each is read once),
redirects are off (an API does not redirect a POST), JSON is encoded and
parsed with orjson, and a request that succeeds writes no log line.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

import orjson
import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from livetx.config import LLMConfig, STTConfig, TTSConfig
from livetx.fences.treq import NO_COOKIES, Hangup, PreparedURL, prepared_url
from livetx.providers.base import LLMError, Message, ProviderError, STTError, TTSError, ToolCall, Voices
from livetx.providers.openai_calls import ToolCallAccumulator
from livetx.providers.sse import SSEDecoder, SSEError

_T = TypeVar("_T")
_C = TypeVar("_C", bound="Service")

_log = Logger()

_EXCERPT = 300
#: After ``[DONE]`` the body should end at once; a server that keeps it open
#: this long is hung up on rather than left holding a connection.
_DRAIN_SECONDS = 2.0


class Service(Protocol):
    """Where an OpenAI-compatible service is (a config section: ``[llm]``, ``[tts]``, ``[stt]``)."""

    @property
    def base_url(self) -> str: ...
    @property
    def api_key(self) -> str | None: ...
    @property
    def timeout(self) -> float: ...


class _Upstream:
    """POSTs to one OpenAI-compatible service with a deadline and real cancellation."""

    def __init__(
        self,
        http: HTTPClient,
        clock: IReactorTime,
        service: Service,
        error: type[ProviderError],
        what: str,
    ) -> None:
        base_url, api_key, timeout = service.base_url, service.api_key, service.timeout
        self._http = http
        self._clock = clock
        self._base_url = base_url.rstrip("/")
        self._urls: dict[str, PreparedURL] = {}
        self._api_key = api_key
        self._headers: dict[bytes | str, list[bytes | str]] = (
            {b"authorization": [f"Bearer {api_key}".encode("utf-8")]} if api_key else {}
        )
        self._json_headers: dict[bytes | str, list[bytes | str]] = {
            **self._headers, b"content-type": [b"application/json"],
        }
        self._timeout = timeout
        self._error = error
        self._what = what

    def url(self, path: str) -> PreparedURL:
        """``path`` under the base URL, parsed and IDNA-encoded once per path."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = prepared_url(self._base_url + path)
        return url

    def post(
        self, path: str, read: Callable[[Hangup], Deferred[_T]], *, json: Any = None, **body: Any
    ) -> Deferred[_T]:
        """POST ``json`` or ``body`` (treq's ``data``, ``files``); ``read`` a 2xx response.

        An error status fails with an excerpt of its body. A cancel or the
        deadline closes the connection at any stage: before the headers
        through the Agent, after them by hanging up on the body.
        """
        response: Hangup | None = None
        cancelled = False
        headers = self._headers
        if json is not None:  # orjson: the chat request carries the whole history
            body["data"], headers = orjson.dumps(json), self._json_headers
        # cookies: a jar, so treq does not build an empty one from None per request
        request = self._http.post(
            self.url(path), headers=headers, cookies=NO_COOKIES, allow_redirects=False,
            unbuffered=True, **body,
        )

        def cancel(_: Deferred[_T]) -> None:
            nonlocal cancelled
            cancelled = True
            if response is not None:
                response.hang_up()
            else:
                request.cancel()

        result: Deferred[_T] = Deferred(cancel)

        def respond(answer: IResponse) -> Deferred[Any]:
            nonlocal response
            response = Hangup(answer)
            if 200 <= answer.code < 300:
                return read(response)
            excerpt = bytearray()
            reading = treq.collect(response, lambda b: excerpt.extend(b[: _EXCERPT - len(excerpt)]))
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
        started = self._clock.seconds()
        result.addTimeout(self._timeout, self._clock, onTimeoutCancel=self._timed_out)
        return result.addErrback(self._explain).addErrback(self._failed, path, started)

    def stream(self, path: str, on_data: Callable[[bytes], bool], *, json: Any) -> Deferred[None]:
        """POST and feed each body chunk to ``on_data`` as it arrives.

        ``on_data`` returns true once the payload is complete (``[DONE]``):
        the result fires then, and the rest of the body drains so the
        connection can go back to the pool.
        """

        def read(response: Hangup) -> Deferred[None]:
            complete: Deferred[None] = Deferred()
            drain: IDelayedCall | None = None

            def feed(chunk: bytes) -> None:
                nonlocal drain
                if drain is None and on_data(chunk):
                    drain = self._clock.callLater(_DRAIN_SECONDS, response.hang_up)
                    complete.callback(None)

            def ended(outcome: Failure | None) -> None:
                if drain is not None and drain.active():
                    drain.cancel()
                if complete.called:  # a drain cut short is no news
                    return
                if isinstance(outcome, Failure):
                    complete.errback(outcome)
                else:
                    complete.callback(None)

            treq.collect(response, feed).addBoth(ended)
            return complete

        return self.post(path, read, json=json)

    def _timed_out(self, outcome: Any, timeout: float) -> Any:
        """``addTimeout`` cancelled the request: say so in the provider's terms."""
        if isinstance(outcome, Failure) and outcome.check(CancelledError):
            raise self._error(f"{self._what} timed out after {timeout:g} s")
        return outcome

    def _explain(self, failure: Failure) -> Failure:
        """A cancel stays a cancel and a provider error stays; anything else could not reach it."""
        if failure.check(CancelledError, ProviderError):
            return failure
        raise self._error(f"cannot reach the {self._what}: {_reason(failure)}")

    def _failed(self, failure: Failure, path: str, started: float) -> Failure:
        # Failures only: a line for every success would be a line per sentence.
        _log.debug(
            "{what} POST {path} failed after {elapsed:.3f} s: {reason}",
            what=self._what, path=path, elapsed=self._clock.seconds() - started,
            reason=failure.getErrorMessage(),
        )
        return failure

    def _status_error(self, body: bytes, code: int) -> None:
        excerpt = body.decode("utf-8", "replace").strip()
        if self._api_key:  # some servers echo the credentials they rejected
            excerpt = excerpt.replace(self._api_key, "***")
        raise self._error(f"{self._what} answered HTTP {code}: {excerpt}")


class OpenAIChat:
    """``POST /chat/completions`` with ``stream: true``; each delta as it arrives."""

    def __init__(self, config: LLMConfig, http: HTTPClient, reactor: IReactorTime) -> None:
        self.model = config.model
        self._upstream = _Upstream(http, reactor, config, LLMError, "chat model")

    def stream(
        self, messages: Sequence[Message], on_delta: Callable[[str], None],
        tools: Sequence[dict[str, Any]] | None = None,
        on_payload: Callable[[dict[str, Any]], None] | None = None,
    ) -> Deferred[None]:
        """Stream a reply; with ``tools``, each chunk also goes to ``on_payload`` (tool calls)."""
        decoder = SSEDecoder()
        evented = False

        def on_data(chunk: bytes) -> bool:
            nonlocal evented
            try:
                events = decoder.feed(chunk)
            except SSEError as e:
                raise LLMError(f"chat model sent {e}") from None
            for event in events:
                evented = True
                if event.data.strip() == "[DONE]":
                    return True
                payload = _payload(event.data)
                for text in _delta_texts(payload):
                    on_delta(text)
                if on_payload is not None:
                    on_payload(payload)
            return False

        def check(_: None) -> None:
            if not evented:  # a 200 that is not an event stream (an HTML page, say)
                raise LLMError("chat model sent no event stream")

        request: dict[str, Any] = {"model": self.model, "messages": list(messages), "stream": True}
        if tools:
            request["tools"] = list(tools)
        return self._upstream.stream("/chat/completions", on_data, json=request).addCallback(check)

    def stream_tools(
        self, messages: Sequence[Message], on_delta: Callable[[str], None], tools: Sequence[dict[str, Any]] | None,
    ) -> Deferred[list[ToolCall]]:
        """Offer ``tools`` to the model; fire with the calls it asked for (none: it answered)."""
        calls = ToolCallAccumulator()
        return self.stream(messages, on_delta, tools, calls.feed).addCallback(lambda _: calls.calls())


def _reason(failure: Failure) -> str:
    """A failure's text for a client; twisted.web wraps its causes (``ResponseFailed``)."""
    reasons = getattr(failure.value, "reasons", None)
    if isinstance(reasons, list) and reasons:
        return "; ".join(r.getErrorMessage() if isinstance(r, Failure) else str(r) for r in reasons)
    return failure.getErrorMessage()


def _payload(data: str) -> dict[str, Any]:
    """One chat-completion chunk's JSON object, or ``LLMError``."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise LLMError("chat model sent an event that is not JSON") from None
    if not isinstance(payload, dict):
        raise LLMError("chat model sent an event that is not a JSON object")
    if "error" in payload:
        raise LLMError(f"chat model error: {str(payload['error'])[:_EXCERPT]}")
    return payload


def _delta_texts(payload: dict[str, Any]) -> list[str]:
    """The reply text in one chat-completion chunk (``reasoning_content`` is not spoken)."""
    texts = []
    for choice in payload.get("choices") or ():
        content = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
        if isinstance(content, str) and content:
            texts.append(content)
    return texts


class _Engine(Generic[_C]):
    """An engine on one OpenAI-compatible endpoint, configured by its section."""

    error: type[ProviderError]
    what: str

    def __init__(self, config: _C, http: HTTPClient, reactor: IReactorTime) -> None:
        self._config = config
        self._upstream = _Upstream(http, reactor, config, self.error, self.what)


#: OpenAI's voices (https://platform.openai.com/docs/guides/text-to-speech); ``tts-1`` and
#: ``tts-1-hd`` have the first nine. A compatible server lists its own in ``[tts] voices``.
OPENAI_VOICES = ("alloy", "ash", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
                 "ballad", "cedar", "marin", "verse")
OPENAI_TTS1_VOICES = OPENAI_VOICES[:9]


class OpenAISpeech(_Engine[TTSConfig]):
    """``POST /audio/speech``: one sentence in, one audio file out."""

    name = "openai_tts_api"
    error = TTSError
    what = "speech service"

    def synthesize(self, text: str, voice: str | None = None) -> Deferred[bytes]:
        c = self._config
        request = {"model": c.model or "tts-1", "input": text, "voice": voice or c.voice or "alloy",
                   "response_format": c.response_format}
        return self._upstream.post("/audio/speech", self._audio, json=request)

    def voices(self) -> Voices:
        """``[tts] voices``, else OpenAI's for the model; the configured voice is always one of them."""
        c = self._config
        names = c.voices or (OPENAI_TTS1_VOICES if (c.model or "tts-1").startswith("tts-1") else OPENAI_VOICES)
        default = c.voice or "alloy"
        return Voices(tuple(names if default in names else [default, *names]), default)

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


class OpenAITranscriber(_Engine[STTConfig]):
    """``POST /audio/transcriptions`` with the segment as a multipart WAV upload."""

    name = "openai_stt_api"
    error = STTError
    what = "transcription service"

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
