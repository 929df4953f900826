"""Twilio's incoming-call webhook: check the signature, answer with ``<Connect><Stream>``.

Twilio POSTs the call's parameters form-encoded and signs the request
(``X-Twilio-Signature``): HMAC-SHA1 with the account's auth token over the
full URL it requested followed by each POST parameter's name and value,
sorted by name, Base64-encoded
(https://www.twilio.com/docs/usage/security#validating-requests). A
request without that signature, or with a wrong one, gets 403 and a log
line. A signed one gets TwiML that connects the call to the stream socket,
passing the caller's number and a short-lived call token
(:mod:`livetx.telephony.tokens`) as ``<Parameter>``s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Mapping
from urllib.parse import parse_qs, urlsplit, urlunsplit
from xml.etree import ElementTree

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from livetx.auth.keys import resolve_username
from livetx.errors import ErrorCode, HTTPError
from livetx.telephony.tokens import CallTokens

_log = Logger()

SIGNATURE_HEADER = "x-twilio-signature"
#: Twilio's call parameters are a few hundred bytes; anything far larger is not Twilio.
MAX_BODY_BYTES = 16 * 1024
FORM = "application/x-www-form-urlencoded"


def twilio_signature(auth_token: str, url: str, params: Mapping[str, list[str]]) -> str:
    """The signature Twilio sends for a POST of ``params`` to ``url``."""
    # Twilio's own validators sort a repeated parameter's values and count each value once.
    data = url + "".join(name + value for name in sorted(params) for value in sorted(set(params[name])))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_valid(auth_token: str, url: str, params: Mapping[str, list[str]], signature: str | None) -> bool:
    """Whether ``signature`` is Twilio's for this request, with or without the scheme's default port
    in the URL (Twilio signs the URL as configured; a proxy may add or drop the port)."""
    if not signature:
        return False
    given = signature.encode("utf-8", "replace")
    return any(hmac.compare_digest(twilio_signature(auth_token, candidate, params).encode("ascii"), given)
               for candidate in _port_variants(url))


def _port_variants(url: str) -> list[str]:
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


def caller_username(caller: str, usernames: Mapping[str, str]) -> str | None:
    """Who a caller is: the configured name for the number, or the number itself."""
    username, _ = resolve_username(usernames.get(caller, caller))
    return username


class TwilioVoice(Resource):
    """``POST /telephony/twilio/voice``: the number's "A call comes in" webhook."""

    isLeaf = True

    def __init__(self, *, auth_token: str, public_url: str | None, stream_path: str, tokens: CallTokens,
                 usernames: Mapping[str, str]) -> None:
        super().__init__()
        self._auth_token = auth_token
        self._public_url = public_url.rstrip("/") if public_url else None
        self._stream_path = stream_path
        self._tokens = tokens
        self._usernames = usernames

    def body_limit(self, request: Request) -> int:
        return MAX_BODY_BYTES

    def check_headers(self, request: Request) -> None:
        """Only a form POST is read (:class:`livetx.fences.twisted_web.BodyRoute`)."""
        if request.method != b"POST":
            raise HTTPError(405, ErrorCode.METHOD_NOT_ALLOWED, "use POST")
        kind = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if kind != FORM:
            raise HTTPError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"send {FORM}")

    def _base(self, request: Request) -> str:
        return public_base(request, self._public_url)

    def render_POST(self, request: Request) -> bytes:
        base = self._base(request)
        url = base + request.uri.decode("utf-8", "replace")
        assert request.content is not None
        params = parse_qs(request.content.read().decode("utf-8", "replace"), keep_blank_values=True)
        header = request.getHeader(SIGNATURE_HEADER)
        if not signature_valid(self._auth_token, url, params, header):
            _log.warn("Refused a Twilio webhook request from {peer}: {why} X-Twilio-Signature",
                      peer=request.getClientAddress().host if request.getClientAddress() else "?",
                      why="wrong" if header else "no")
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Forbidden: invalid X-Twilio-Signature\n"
        caller = (params.get("From") or [""])[0]
        call_sid = (params.get("CallSid") or [""])[0]
        username = caller_username(caller, self._usernames)
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        if username is None or not call_sid:
            _log.warn("A Twilio call without a usable caller number or CallSid: hanging up")
            return _twiml(None)
        stream = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + self._stream_path
        token = self._tokens.issue(username, caller, call_sid)
        _log.info("Answering call {call} from {caller}", call=call_sid, caller=caller)
        return _twiml((stream, {"caller": caller, "token": token}))


def _twiml(stream: tuple[str, dict[str, str]] | None) -> bytes:
    """``<Connect><Stream>`` with parameters, or ``<Hangup/>``."""
    response = ElementTree.Element("Response")
    if stream is None:
        ElementTree.SubElement(response, "Hangup")
    else:
        url, parameters = stream
        connect = ElementTree.SubElement(response, "Connect")
        element = ElementTree.SubElement(connect, "Stream", url=url)
        for name, value in parameters.items():
            ElementTree.SubElement(element, "Parameter", name=name, value=value)
    body: bytes = ElementTree.tostring(response, encoding="utf-8", xml_declaration=True)
    return body
