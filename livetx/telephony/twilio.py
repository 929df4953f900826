"""Twilio Media Streams, bidirectional (``<Connect><Stream>``).

The frames, field for field, as Twilio documents them
(https://www.twilio.com/docs/voice/media-streams/websocket-messages):
in ``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``; out
``media``, ``mark``, ``clear``, each with the ``streamSid``. Audio is always
μ-law at 8 kHz, mono. Its incoming-call webhook (:data:`ANSWER`) is signed
with ``X-Twilio-Signature`` and answered with TwiML.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Mapping
from xml.etree import ElementTree

from livetx.telephony import Carrier, Event, Frame, Start
from livetx.telephony.codec import MULAW, AudioFormat
from livetx.telephony.frames import JsonFrames, b64, common, parameters, section, start_of, text, unknown, unsupported
from livetx.telephony.webhook import FORM, Answering, Incoming, hang_up, url_variants, xml

#: The one format Twilio streams.
TWILIO_AUDIO = AudioFormat(MULAW, 8000)


class Twilio(JsonFrames):
    name = "twilio"

    def parse(self, frame: Frame) -> Event:
        found = common(frame, "streamSid")
        if found is not None:
            return found
        if frame.get("event") != "start":
            raise unknown(frame.get("event"))
        start, fmt = start_of(frame, "mediaFormat")
        encoding, rate, channels = fmt.get("encoding"), fmt.get("sampleRate"), fmt.get("channels", 1)
        if encoding != "audio/x-mulaw" or rate != 8000 or channels != 1:
            raise unsupported(encoding, rate)
        return Start(text(start, "streamSid", "start"), text(start, "callSid", "start"), TWILIO_AUDIO,
                     parameters(start.get("customParameters")))

    def media(self, stream_id: str, audio: bytes, fmt: AudioFormat) -> Frame:
        return {"event": "media", "streamSid": stream_id, "media": {"payload": b64(audio)}}

    def mark(self, stream_id: str, name: str) -> Frame:
        return {"event": "mark", "streamSid": stream_id, "mark": {"name": name}}

    def clear(self, stream_id: str) -> Frame:
        return {"event": "clear", "streamSid": stream_id}


CARRIER: Carrier = Twilio()


# -- the incoming-call webhook ---------------------------------------------------


def twilio_signature(auth_token: str, url: str, params: Mapping[str, list[str]]) -> str:
    """The signature Twilio sends for a POST of ``params`` to ``url``
    (https://www.twilio.com/docs/usage/security#validating-requests): HMAC-SHA1 with the auth token
    over the URL followed by each parameter's name and value, sorted by name, Base64-encoded."""
    # Twilio's own validators sort a repeated parameter's values and count each value once.
    data = url + "".join(name + value for name in sorted(params) for value in sorted(set(params[name])))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_valid(auth_token: str, url: str, params: Mapping[str, list[str]], signature: str | None) -> bool:
    """Whether ``signature`` is Twilio's for this request, the URL with or without its default port."""
    if not signature:
        return False
    given = signature.encode("utf-8", "replace")
    return any(hmac.compare_digest(twilio_signature(auth_token, candidate, params).encode("ascii"), given)
               for candidate in url_variants(url))


class TwilioAnswer:
    """TwiML ``<Connect><Stream>`` for a form POST signed with ``X-Twilio-Signature``."""

    title = "Twilio"
    signature_header = "X-Twilio-Signature"
    bodies: tuple[str, ...] = (FORM,)
    gets = False
    caller_field = "From"
    call_field = "CallSid"

    def signed(self, incoming: Incoming, secret: str, now: float) -> bool:
        return signature_valid(secret, incoming.url, incoming.fields, incoming.header(self.signature_header))

    def answer(self, stream: str, caller: str, call: str, token: str) -> tuple[bytes, str]:
        response = ElementTree.Element("Response")
        element = ElementTree.SubElement(ElementTree.SubElement(response, "Connect"), "Stream", url=stream)
        for name, value in {"caller": caller, "token": token}.items():
            ElementTree.SubElement(element, "Parameter", name=name, value=value)
        return xml(response)

    def refuse(self) -> tuple[bytes, str]:
        return hang_up()


ANSWER: Answering = TwilioAnswer()
