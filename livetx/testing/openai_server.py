"""An OpenAI-compatible service in-process, for tests and benchmarks.

It speaks the real wire formats (SSE chat-completion chunks, WAV speech,
multipart transcriptions) so livetx's real HTTP providers are what gets
tested. Its behaviour is set by plain attributes between requests.

Run alone: ``python -m livetx.testing.openai_server --port 8900 --tokens 40``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import struct
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from functools import lru_cache
from typing import Any, Callable, cast

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort, ITCPTransport
from twisted.web.http import parse_qs
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from livetx.audio import to_wav

#: (messages, tools offered) → calls to make, or None to answer in text.
ToolScript = Callable[[list[dict[str, Any]], list[dict[str, Any]]], "list[dict[str, Any]] | None"]

DEFAULT_REPLY = (
    "Sure, here is a short answer. It comes in a few sentences. "
    "Each one is spoken as soon as it is complete. That keeps the first audio early. "
    "And this is the last one."
)
_TOKENS = re.compile(r"\S+\s*|\s+")


def words(text: str) -> list[str]:
    """The default tokens: each word with the spaces that follow it."""
    return _TOKENS.findall(text)


@dataclass
class Recorded:
    """One request as the fake saw it."""

    path: str
    headers: dict[str, str]
    #: The client's source port: the same port twice means a reused connection.
    port: int = 0
    json: Any = None
    fields: dict[str, bytes] = field(default_factory=dict)


@lru_cache(maxsize=64)
def tone(seconds: float, rate: int = 16_000) -> bytes:
    """A quiet 440 Hz WAV: real audio a browser or the wave module can decode."""
    frames = int(seconds * rate)
    samples = struct.pack(
        f"<{frames}h", *(int(3000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(frames))
    )
    return to_wav(samples, rate)


class FakeOpenAI:
    """The service's knobs and what it has seen."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        #: The reply text, or a function of the request's messages.
        self.reply: str | Callable[[list[dict[str, Any]]], str] = DEFAULT_REPLY
        #: Tool calls the model makes, when the request offers tools: a function of
        #: the request's messages and ``tools`` giving a list of calls, each
        #: ``{"name", "arguments"}`` (a dict, or raw text) with an optional
        #: ``"id"`` and ``"text"`` said before it, or None to answer with ``reply``.
        #: Streamed as real services do: id and name first, arguments in pieces.
        self.tool_calls: ToolScript | None = None
        #: How many characters of arguments go in each tool-call delta.
        self.argument_piece = 7
        #: How the reply is cut into one SSE chunk per token.
        self.tokenize: Callable[[str], list[str]] = words
        #: Seconds between SSE chunks (0 still yields to the reactor between them).
        self.token_delay = 0.0
        #: Seconds more before the first token (after the headers): a hosted model's time to first token.
        self.first_token_delay = 0.0
        #: Answer every request with this status (and ``fail_body`` as ``fail_type``) instead.
        self.fail_status: int | None = None
        self.fail_body = '{"error": {"message": "the fake was told to fail"}}'
        self.fail_type = b"application/json"
        #: Send headers and one chunk, then nothing: for timeouts.
        self.hang = False
        #: Send headers and part of the body, then drop the TCP connection.
        self.drop = False
        #: Raw bytes written into the stream after the first token (say, a malformed event).
        self.inject = b""
        #: After ``data: [DONE]`` leave the response open, as some servers do.
        self.keep_open = False
        self.speech_delay = 0.0
        self.transcript = "hello there"
        #: Seconds before a transcription is answered; or a Deferred, answered when it fires (a test
        #: that needs one held until something else is done, however slow the machine).
        self.transcription_delay: float | Deferred[None] = 0.0
        self.requests: list[Recorded] = []
        #: Paths of streamed responses whose client hung up before the end.
        self.lost: list[str] = []
        self.base_url = ""

    def requests_to(self, endpoint: str) -> list[Recorded]:
        """The recorded requests whose path ends with ``endpoint``, oldest first."""
        return [r for r in self.requests if r.path.endswith(endpoint)]

    def resource(self) -> Resource:
        root, v1, chat, audio = Resource(), Resource(), Resource(), Resource()
        root.putChild(b"v1", v1)
        v1.putChild(b"chat", chat)
        v1.putChild(b"audio", audio)
        chat.putChild(b"completions", _Endpoint(self, self._chat))
        audio.putChild(b"speech", _Endpoint(self, self._speech))
        audio.putChild(b"transcriptions", _Endpoint(self, self._transcription))
        return root

    # -- handlers: each gets the request and its record -----------------------

    def _fail(self, request: Request) -> bytes | None:
        if self.fail_status is None:
            return None
        request.setResponseCode(self.fail_status)
        request.setHeader(b"content-type", self.fail_type)
        return self.fail_body.encode()

    def _chat(self, request: Request, record: Recorded) -> Any:
        failed = self._fail(request)
        if failed is not None:
            return failed
        messages = (record.json or {}).get("messages", [])
        model = (record.json or {}).get("model", "fake")
        offered = (record.json or {}).get("tools")
        calls = self.tool_calls(messages, offered) if self.tool_calls and offered else None
        if calls and (record.json or {}).get("stream"):
            request.setHeader(b"content-type", b"text/event-stream")
            preamble = "".join(str(c.get("text", "")) for c in calls)
            _Streamer(self, request, model, self.tokenize(preamble) if preamble else [],
                      self._tool_deltas(calls)).start()
            return NOT_DONE_YET
        text = self.reply(messages) if callable(self.reply) else self.reply
        if not (record.json or {}).get("stream"):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
            }).encode()
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        _Streamer(self, request, model, self.tokenize(text)).start()
        return NOT_DONE_YET

    def _tool_deltas(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The ``delta`` objects of a streamed reply that calls tools."""
        deltas: list[dict[str, Any]] = []
        for index, call in enumerate(calls):
            arguments = call.get("arguments", {})
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            deltas.append({"tool_calls": [{
                "index": index, "id": call.get("id", f"call_{len(self.requests)}_{index}"), "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }]})
            step = max(1, self.argument_piece)
            for i in range(0, len(text), step):
                deltas.append({"tool_calls": [{"index": index, "function": {"arguments": text[i : i + step]}}]})
        return deltas

    def _speech(self, request: Request, record: Recorded) -> Any:
        failed = self._fail(request)
        if failed is not None:
            return failed
        words = len(str((record.json or {}).get("input", "")).split())
        audio = tone(round(min(2.0, 0.1 + 0.05 * words), 2))

        request.setHeader(b"content-type", b"audio/wav")
        return self._later(request, self.speech_delay, audio)

    def _later(self, request: Request, delay: float | Deferred[None], body: bytes) -> Any:
        """Answer after ``delay`` seconds (or once it fires), unless the client has gone by then."""
        gone: list[object] = []
        request.notifyFinish().addErrback(gone.append)

        def send() -> None:
            if gone:
                return
            if self.drop:
                request.write(body[: len(body) // 2])
                _abort(request)
                return
            request.write(body)
            request.finish()

        if isinstance(delay, Deferred):
            delay.addCallback(lambda _: send())
        else:
            self.reactor.callLater(delay, send)
        return NOT_DONE_YET

    def _transcription(self, request: Request, record: Recorded) -> Any:
        failed = self._fail(request)
        if failed is not None:
            return failed
        request.setHeader(b"content-type", b"application/json")
        return self._later(request, self.transcription_delay, json.dumps({"text": self.transcript}).encode())


def _abort(request: Request) -> None:
    """Cut the connection mid-response, as a failing upstream does."""
    cast(ITCPTransport, request.channel.transport).abortConnection()


def _body(request: Request) -> bytes:
    content = request.content
    assert content is not None  # twisted.web reads the body before rendering
    body: bytes = content.read()
    return body


def _form_fields(request: Request) -> dict[str, bytes]:
    """The fields of a ``multipart/form-data`` or urlencoded body (the first value of each)."""
    ctype = request.getHeader(b"content-type") or b""
    body = _body(request)
    if ctype.startswith(b"multipart/"):
        form = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype + b"\r\n\r\n" + body)
        fields: dict[str, bytes] = {}
        for part in form.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str) and name not in fields:
                payload = part.get_payload(decode=True)
                fields[name] = payload if isinstance(payload, bytes) else b""
        return fields
    return {k.decode(): v[0] for k, v in parse_qs(body).items()}


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    body = {
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
        "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"  # orjson: the benchmark measures livetx, not this


class _Streamer:
    """Writes one SSE chunk per token (then per tool-call delta), pausing ``token_delay`` between them."""

    def __init__(
        self, fake: FakeOpenAI, request: Request, model: str, tokens: list[str],
        tool_deltas: list[dict[str, Any]] | None = None,
    ) -> None:
        self.fake, self.request, self.model, self.tokens = fake, request, model, tokens
        self.tool_deltas = tool_deltas or []
        self.finish = "tool_calls" if self.tool_deltas else "stop"
        self.call: IDelayedCall | None = None
        self.index = 0

    def start(self) -> None:
        self.request.notifyFinish().addErrback(self._lost)
        self.request.write(_chunk(self.model, {"role": "assistant", "content": ""}, None))
        self._schedule()

    def _schedule(self) -> None:
        delay = self.fake.token_delay + (self.fake.first_token_delay if self.index == 0 else 0.0)
        self.call = self.fake.reactor.callLater(delay, self._next)

    def _next(self) -> None:
        self.call = None
        if self.index < len(self.tokens):
            self.request.write(_chunk(self.model, {"content": self.tokens[self.index]}, None))
            self.index += 1
            if self.index == 1 and self.fake.inject:
                self.request.write(self.fake.inject)
            if self.index == 1 and self.fake.drop:
                _abort(self.request)
                return
            if not (self.fake.hang and self.index == 1):
                self._schedule()
            return
        if self.tool_deltas:
            self.request.write(_chunk(self.model, self.tool_deltas.pop(0), None))
            self._schedule()
            return
        self.request.write(_chunk(self.model, {}, self.finish) + b"data: [DONE]\n\n")
        if not self.fake.keep_open:
            self.request.finish()

    def _lost(self, reason: Any) -> None:
        self.fake.lost.append(self.request.path.decode())
        if self.call is not None and self.call.active():
            self.call.cancel()


class _Endpoint(Resource):
    """A POST-only leaf that records the request before its handler runs."""

    isLeaf = True

    def __init__(self, fake: FakeOpenAI, handler: Callable[[Request, Recorded], Any]) -> None:
        super().__init__()
        self.fake = fake
        self.handler = handler

    def render_POST(self, request: Request) -> Any:
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        record = Recorded(request.path.decode(), headers, getattr(request.getClientAddress(), "port", 0))
        if headers.get("content-type", "").startswith("application/json"):
            record.json = orjson.loads(_body(request) or b"null")
        else:
            record.fields = _form_fields(request)
        self.fake.requests.append(record)
        return self.handler(request, record)


def start(reactor: Any, port: int = 0, interface: str = "127.0.0.1") -> tuple[FakeOpenAI, IListeningPort]:
    """Listen on ``interface:port``; the fake's ``base_url`` is filled in."""
    fake = FakeOpenAI(reactor)
    # Forms are parsed by the one endpoint that takes them (transcriptions):
    # Twisted's own parsing reads every POST's content type with the email
    # package, a cost the load benchmark felt (benchmarks/RESULTS.md).
    site = Site(fake.resource(), parsePOSTFormSubmission=False)
    site.noisy = False
    listening = reactor.listenTCP(port, site, interface=interface)
    fake.base_url = f"http://{interface}:{listening.getHost().port}/v1"
    return fake, listening


def main() -> None:
    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description="An OpenAI-compatible service simulator.")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--tokens", type=int, default=0, help="reply length in tokens (0: a fixed reply)")
    parser.add_argument("--sentences", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--first-delay", type=float, default=0.0,
                        help="seconds more before the first token (a hosted model's time to first token)")
    parser.add_argument(
        "--call-tool", action="append", default=[], type=tool_call, metavar="NAME[:JSON]",
        help="when the user has just spoken and the request offers tool NAME, call it (with the JSON "
             "arguments; default {}), then answer with the reply (repeatable)")
    args = parser.parse_args()
    fake, _ = start(reactor, args.port, args.interface)
    fake.token_delay = args.delay
    fake.first_token_delay = args.first_delay
    if args.tokens:
        fake.reply = synthetic_reply(args.tokens, args.sentences)
    if args.call_tool:
        fake.tool_calls = calls_offered(args.call_tool)
    print(f"fake OpenAI service on {fake.base_url}", flush=True)
    reactor.run()


def tool_call(spec: str) -> dict[str, Any]:
    """``--call-tool NAME[:JSON]`` as a call of :attr:`FakeOpenAI.tool_calls`."""
    name, _, arguments = spec.partition(":")
    try:
        return {"name": name, "arguments": json.loads(arguments) if arguments else {}}
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{spec!r}: the arguments are not JSON: {e}") from None


def calls_offered(calls: list[dict[str, Any]]) -> ToolScript:
    """A script calling those of ``calls`` the request offers, once the user has just spoken."""
    def script(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        offered = {tool["function"]["name"] for tool in tools}
        wanted = [call for call in calls if call["name"] in offered]
        return wanted if wanted and messages and messages[-1].get("role") == "user" else None
    return script


def synthetic_reply(tokens: int, sentences: int) -> str:
    """``tokens`` words in ``sentences`` sentences, each ending in a full stop."""
    per = max(1, tokens // max(1, sentences))
    words = [f"word{i}" for i in range(tokens)]
    parts = [" ".join(words[i : i + per]) + "." for i in range(0, tokens, per)]
    return " ".join(parts)


if __name__ == "__main__":
    main()
