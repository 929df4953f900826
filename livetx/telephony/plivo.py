"""Plivo audio streams, bidirectional (``<Stream bidirectional="true">``).

Plivo's frames (https://www.plivo.com/docs/voice/xml/the-stream-element):
in ``start`` (``start.callId``, ``start.streamId``, ``start.mediaFormat``),
``media``, ``dtmf``, ``playedStream`` (a checkpoint played), ``clearedAudio``;
out ``playAudio`` (with the audio's ``contentType`` and ``sampleRate``),
``checkpoint`` and ``clearAudio``. Audio is μ-law at 8 kHz or L16 at 8 or
16 kHz; Plivo does not say L16's byte order, and little-endian is assumed.
The answer URL (:data:`ANSWER`) is signed with ``X-Plivo-Signature-V3``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Mapping
from urllib.parse import parse_qs, urlsplit, urlunsplit
from xml.etree import ElementTree

from livetx.telephony import Carrier, Event, Frame, Ignored, Mark, Start
from livetx.telephony.codec import L16, MULAW, AudioFormat
from livetx.telephony.frames import JsonFrames, b64, common, section, start_of, text, unknown, unsupported
from livetx.telephony.webhook import FORM, Answering, Incoming, hang_up, url_variants, xml

FORMATS = {("audio/x-mulaw", 8000): MULAW, ("audio/x-l16", 8000): L16, ("audio/x-l16", 16000): L16}
CONTENT_TYPES = {MULAW: "audio/x-mulaw", L16: "audio/x-l16"}


class Plivo(JsonFrames):
    name = "plivo"

    def parse(self, frame: Frame) -> Event:
        event = frame.get("event")
        if event in ("playedStream", "played"):  # a checkpoint played (its docs use both names)
            return Mark(text(frame, "streamId", "frame"), text(frame, "name", "frame"))
        if event == "clearedAudio":
            return Ignored(frame.get("streamId"))
        found = None if event == "connected" else common(frame, "streamId")
        if found is not None:
            return found
        if event != "start":
            raise unknown(event)
        start, fmt = start_of(frame, "mediaFormat")
        encoding, rate = fmt.get("encoding"), fmt.get("sampleRate")
        if not isinstance(encoding, str) or not isinstance(rate, int) or (encoding, rate) not in FORMATS:
            raise unsupported(encoding, rate)
        headers = frame.get("extra_headers")
        return Start(text(start, "streamId", "start"), text(start, "callId", "start"),
                     AudioFormat(FORMATS[encoding, rate], rate), _headers(headers) if isinstance(headers, str) else {})

    def media(self, stream_id: str, audio: bytes, fmt: AudioFormat) -> Frame:
        return {"event": "playAudio", "media": {
            "contentType": CONTENT_TYPES[fmt.encoding], "sampleRate": fmt.rate, "payload": b64(audio)}}

    def mark(self, stream_id: str, name: str) -> Frame:
        return {"event": "checkpoint", "streamId": stream_id, "name": name}

    def clear(self, stream_id: str) -> Frame:
        return {"event": "clearAudio", "streamId": stream_id}


def _headers(value: str) -> dict[str, str]:
    """``extraHeaders`` as Plivo passes them: ``key=value`` pairs split by ``;`` or ``,``."""
    pairs = (item.split("=", 1) for item in value.replace(",", ";").split(";") if "=" in item)
    return {key.strip(): val.strip() for key, val in pairs}


CARRIER: Carrier = Plivo()


# -- the answer URL ------------------------------------------------------------------


def plivo_signature(auth_token: str, url: str, params: Mapping[str, list[str]], nonce: str) -> str:
    """``X-Plivo-Signature-V3`` for a POST of ``params`` to ``url``, as Plivo's own libraries make it:
    HMAC-SHA256 with the auth token, Base64, over the URL without its query, ``?`` and the query sorted
    by name (then ``.`` if both are there), each POST parameter's name and value sorted by name, ``.``
    and the nonce."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    query_string = "&".join(f"{name}={value}" for name in sorted(query) for value in sorted(query[name]))
    if params:
        base += "?" + query_string + ("." if query_string else "")
        base += "".join(name + value for name in sorted(params) for value in sorted(params[name]))
    elif query_string:
        base += "?" + query_string
    digest = hmac.new(auth_token.encode("utf-8"), f"{base}.{nonce}".encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class PlivoAnswer:
    """Plivo XML ``<Stream bidirectional="true">`` for a form POST signed with ``X-Plivo-Signature-V3``.

    The answer URL gets ``From`` and ``CallUUID`` (the ``start.callId`` of the stream); the caller and
    the call token ride in ``extraHeaders``, which the stream's ``start`` brings back.
    """

    title = "Plivo"
    signature_header = "X-Plivo-Signature-V3"
    bodies: tuple[str, ...] = (FORM,)
    gets = False
    caller_field = "From"
    call_field = "CallUUID"

    def signed(self, incoming: Incoming, secret: str, now: float) -> bool:
        given, nonce = incoming.header(self.signature_header), incoming.header("X-Plivo-Signature-V3-Nonce")
        if not given or not nonce:
            return False
        # One signature per active auth token, comma-separated: any one will do.
        candidates = [s.strip().encode("utf-8", "replace") for s in given.split(",")]
        return any(hmac.compare_digest(plivo_signature(secret, url, incoming.fields, nonce).encode("ascii"), c)
                   for url in url_variants(incoming.url) for c in candidates)

    def answer(self, stream: str, caller: str, call: str, token: str) -> tuple[bytes, str]:
        response = ElementTree.Element("Response")
        element = ElementTree.SubElement(response, "Stream", {
            "bidirectional": "true", "keepCallAlive": "true", "contentType": "audio/x-mulaw;rate=8000",
            "extraHeaders": f"caller={caller},token={token}"})
        element.text = stream
        return xml(response)

    def refuse(self) -> tuple[bytes, str]:
        return hang_up()


ANSWER: Answering = PlivoAnswer()
