"""Telnyx media streaming over WebSocket, bidirectional (``stream_bidirectional_mode: rtp``).

Telnyx's frames (https://developers.telnyx.com/docs/voice/programmable-voice/media-streaming)
are Twilio's in snake case: ``stream_id``, ``sequence_number``,
``start.call_control_id`` and ``start.media_format`` with ``encoding``
(PCMU, PCMA or L16) and ``sample_rate`` (8000 or 16000). The payloads are
RTP payloads, so L16 is big-endian (RFC 3551). Out: ``media``,
``mark`` and ``clear``, which carry no stream id (the socket is the stream).
A TeXML application's voice URL (:data:`ANSWER`) is signed with Ed25519
(``telnyx-signature-ed25519`` over ``{telnyx-timestamp}|{body}``).
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlencode
from xml.etree import ElementTree

from livetx.telephony import Carrier, Event, Frame, Ignored, Start
from livetx.telephony.codec import ALAW, L16, MULAW, AudioFormat
from livetx.telephony.frames import JsonFrames, b64, common, parameters, section, start_of, text, unknown, unsupported
from livetx.telephony.webhook import FORM, FRESH_SECONDS, JSON, Answering, Incoming, hang_up, xml

ENCODINGS = {"PCMU": MULAW, "PCMA": ALAW, "L16": L16}
RATES = (8000, 16000)


class Telnyx(JsonFrames):
    name = "telnyx"
    sequence_field: str | None = "sequence_number"

    def parse(self, frame: Frame) -> Event:
        found = common(frame, "stream_id")
        if found is not None:
            return found
        event = frame.get("event")
        if event == "error":  # Telnyx refused a frame of ours: nothing for the call to do
            return Ignored(frame.get("stream_id"))
        if event != "start":
            raise unknown(event)
        start, fmt = start_of(frame, "media_format")
        encoding, rate = fmt.get("encoding"), fmt.get("sample_rate")
        if encoding not in ENCODINGS or rate not in RATES or fmt.get("channels", 1) != 1:
            raise unsupported(encoding, rate)
        return Start(text(frame, "stream_id", "frame"), text(start, "call_control_id", "start"),
                     AudioFormat(ENCODINGS[encoding], int(rate), big_endian=encoding == "L16"),
                     parameters(start.get("custom_parameters")))

    def media(self, stream_id: str, audio: bytes, fmt: AudioFormat) -> Frame:
        return {"event": "media", "media": {"payload": b64(audio)}}

    def mark(self, stream_id: str, name: str) -> Frame:
        return {"event": "mark", "mark": {"name": name}}

    def clear(self, stream_id: str) -> Frame:
        return {"event": "clear"}


CARRIER: Carrier = Telnyx()


# -- the TeXML answer webhook ----------------------------------------------------


def telnyx_signed(public_key: str, body: bytes, signature: str | None, timestamp: str | None, now: float) -> bool:
    """Whether ``signature`` (Base64) is Telnyx's Ed25519 signature of ``{timestamp}|{body}`` under the account's
    public key (Base64, from the portal), made within :data:`FRESH_SECONDS` of ``now``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not signature or not timestamp:
        return False
    try:
        if abs(now - int(timestamp)) > FRESH_SECONDS:
            return False
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode("ascii") + b"|" + body)
    except (ValueError, binascii.Error, UnicodeEncodeError, InvalidSignature):
        return False
    return True


class TelnyxAnswer:
    """TeXML ``<Connect><Stream>`` (bidirectional, RTP payloads) for a request signed with Ed25519.

    TeXML is TwiML's shape (https://developers.telnyx.com/docs/voice/programmable-voice/texml-verbs/stream):
    the request has ``From`` and ``CallSid`` (the call's ``call_control_id``, which the stream's
    ``start`` names), form-encoded or JSON. The call token rides in the stream URL's query.
    """

    title = "Telnyx"
    signature_header = "telnyx-signature-ed25519"
    bodies: tuple[str, ...] = (FORM, JSON)
    gets = False
    caller_field = "From"
    call_field = "CallSid"

    def signed(self, incoming: Incoming, secret: str, now: float) -> bool:
        return telnyx_signed(secret, incoming.body, incoming.header(self.signature_header),
                             incoming.header("telnyx-timestamp"), now)

    def answer(self, stream: str, caller: str, call: str, token: str) -> tuple[bytes, str]:
        response = ElementTree.Element("Response")
        ElementTree.SubElement(ElementTree.SubElement(response, "Connect"), "Stream", {
            "url": f"{stream}?{urlencode({'token': token})}", "bidirectionalMode": "rtp", "bidirectionalCodec": "PCMU"})
        return xml(response)

    def refuse(self) -> tuple[bytes, str]:
        return hang_up()


ANSWER: Answering = TelnyxAnswer()
