"""A carrier's answer webhook: check the carrier's signature, answer with the document that opens the stream.

Every carrier asks the same question when a call comes in (an HTTP
request to the number's answer URL, with the caller's number and the call's
id) and takes the same kind of answer (a document that connects the call to
a WebSocket). What differs is how the request is signed, which fields name
the caller and the call, and the document's shape: that is an
:class:`Answering`, one in each carrier's module beside its frames. This
resource is the rest, once: a request without the carrier's signature, or
with a wrong one, gets 403 and a log line; a signed one gets the document,
carrying the caller's number and a short-lived call token
(:mod:`livetx.telephony.tokens`) that the stream must bring back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol
from urllib.parse import parse_qs, urlsplit, urlunsplit
from xml.etree import ElementTree

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from livetx.auth.keys import resolve_username
from livetx.errors import ErrorCode, HTTPError
from livetx.telephony.tokens import CallTokens
from livetx.web.replies import error_body

_log = Logger()

#: A carrier's call parameters are a few hundred bytes; anything far larger is not the carrier.
MAX_BODY_BYTES = 16 * 1024
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
XML = "text/xml; charset=utf-8"
#: How far a signed timestamp may lie from the server's clock (Telnyx's and Vonage's libraries allow 5 minutes).
FRESH_SECONDS = 300


@dataclass(frozen=True)
class Incoming:
    """An answer request as the carrier sent it."""

    method: str
    #: The URL the carrier requested (the public address, path and query): what its signature covers.
    url: str
    body: bytes
    #: The call's parameters: the form or JSON body's, or the query's for a GET.
    fields: dict[str, list[str]]
    #: A request header by name (case-insensitive), or None.
    header: Callable[[str], str | None]

    def field(self, name: str) -> str:
        return (self.fields.get(name) or [""])[0]


class Answering(Protocol):
    """How one carrier asks to have a call answered, and what it takes back."""

    #: The carrier's name in log lines (``Twilio``).
    title: str
    #: The header that carries the signature, named when a request is refused.
    signature_header: str
    #: The body types a POST may have (the first is the one the carrier sends by default).
    bodies: tuple[str, ...]
    #: Whether the carrier may ask with GET, its parameters in the query.
    gets: bool
    #: The fields that name the caller's number and the call.
    caller_field: str
    call_field: str

    def signed(self, incoming: Incoming, secret: str, now: float) -> bool:
        """Whether the request carries the carrier's valid signature, made with ``secret``, at ``now``."""

    def answer(self, stream: str, caller: str, call: str, token: str) -> tuple[bytes, str]:
        """The document (and its content type) that connects ``call`` to the stream socket at ``stream``."""

    def refuse(self) -> tuple[bytes, str]:
        """The document that ends a call that cannot be taken (no call id to make its token for)."""


def url_variants(url: str) -> list[str]:
    """``url`` with and without the scheme's default port: the carrier signs the URL as configured, and a
    proxy may add or drop the port (Twilio's own validators accept both)."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    variants = [url]
    if default is not None and parts.port in (None, default):
        with_port = parts._replace(netloc=f"{host}:{default}")
        variants += [urlunsplit(parts._replace(netloc=host)), urlunsplit(with_port)]
    return list(dict.fromkeys(variants))


def public_base(request: Request, public_url: str | None) -> str:
    """Scheme and host as the caller reached us: configured behind a proxy, else from the request."""
    if public_url is not None:
        return public_url
    host = (request.getHeader("host") or "localhost").strip()
    return f"{'https' if request.isSecure() else 'http'}://{host}"


#: A caller ID that names someone: a number (E.164, or national digits) or a SIP address. Anything else
#: ("anonymous", "Restricted", "Unknown", nothing) is a withheld number.
NUMBER = re.compile(r"^(\+?[0-9]{3,16}|sips?:\S+)$")


def caller_username(caller: str, call: str, usernames: Mapping[str, str]) -> str | None:
    """Who a caller is: the configured name for the number, or the number itself, so their history comes
    back on the next call. A withheld number is someone new for this call alone: callers who withhold
    their numbers must not share one history."""
    name = usernames.get(caller) or (caller if NUMBER.match(caller) else f"withheld-{call}")
    username, _ = resolve_username(name)
    return username


def xml(root: ElementTree.Element) -> tuple[bytes, str]:
    """An XML answer document (TwiML, TeXML, Plivo XML) and its content type."""
    body: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return body, XML


def hang_up() -> tuple[bytes, str]:
    """``<Response><Hangup/></Response>``: TwiML's, and TeXML's and Plivo XML's alike."""
    response = ElementTree.Element("Response")
    ElementTree.SubElement(response, "Hangup")
    return xml(response)


def body_fields(kind: str, body: bytes) -> dict[str, list[str]]:
    """A form or JSON object body's fields, each as a list of strings (a form may repeat a field)."""
    if kind == FORM:
        return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HTTPError(400, ErrorCode.INVALID_JSON, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(400, ErrorCode.INVALID_MESSAGE_FORMAT, "the body is not a JSON object")
    return {str(k): [v if isinstance(v, str) else orjson.dumps(v).decode()] for k, v in data.items()}


def content_kind(request: Request) -> str:
    return (request.getHeader("content-type") or "").split(";")[0].strip().lower()


class AnswerWebhook(Resource):
    """``/telephony/<carrier>/voice``: the number's "a call comes in" webhook."""

    isLeaf = True

    def __init__(self, *, answering: Answering, secret: str, public_url: str | None, stream_path: str,
                 tokens: CallTokens, usernames: Mapping[str, str], clock: IReactorTime) -> None:
        super().__init__()
        self._answering = answering
        self._secret = secret
        self._public_url = public_url.rstrip("/") if public_url else None
        self._stream_path = stream_path
        self._tokens = tokens
        self._usernames = usernames
        self._clock = clock

    def body_limit(self, request: Request) -> int:
        return MAX_BODY_BYTES

    def check_headers(self, request: Request) -> None:
        """Only a POST of the carrier's body type is read (:class:`livetx.fences.twisted_web.BodyRoute`)."""
        if request.method != b"POST":
            allowed = "GET or POST" if self._answering.gets else "POST"
            raise HTTPError(405, ErrorCode.METHOD_NOT_ALLOWED, f"use {allowed}")
        if content_kind(request) not in self._answering.bodies:
            raise HTTPError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"send {' or '.join(self._answering.bodies)}")

    def render(self, request: Request) -> bytes:
        try:
            if request.method == b"GET" and self._answering.gets:
                query = urlsplit(request.uri.decode("utf-8", "replace")).query
                return self._answer(request, b"", parse_qs(query, keep_blank_values=True))
            self.check_headers(request)  # a request without a body never met the check before it
            assert request.content is not None
            body = request.content.read()
            return self._answer(request, body, body_fields(content_kind(request), body))
        except HTTPError as error:
            return error_body(request, error)

    def _answer(self, request: Request, body: bytes, fields: dict[str, list[str]]) -> bytes:
        answering = self._answering
        base = public_base(request, self._public_url)
        incoming = Incoming(method=request.method.decode("ascii", "replace"),
                            url=base + request.uri.decode("utf-8", "replace"), body=body, fields=fields,
                            header=lambda name: request.getHeader(name))
        if not answering.signed(incoming, self._secret, self._clock.seconds()):
            peer = request.getClientAddress()
            _log.warn("Refused a {carrier} webhook request from {peer}: {why} {header}", carrier=answering.title,
                      peer=getattr(peer, "host", "?"), header=answering.signature_header,
                      why="wrong" if request.getHeader(answering.signature_header) else "no")
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"Forbidden: invalid {answering.signature_header}\n".encode()
        caller, call = incoming.field(answering.caller_field), incoming.field(answering.call_field)
        username = caller_username(caller, call, self._usernames) if call else None
        if username is None:
            _log.warn("A {carrier} call without a usable call id: hanging up", carrier=answering.title)
            document, kind = answering.refuse()
        else:
            stream = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + self._stream_path
            _log.info("Answering call {call} from {caller}", call=call, caller=caller)
            document, kind = answering.answer(stream, caller, call, self._tokens.issue(username, caller, call))
        request.setHeader(b"content-type", kind.encode())
        return document
