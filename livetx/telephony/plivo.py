"""Plivo audio streams, bidirectional (``<Stream bidirectional="true">``).

Plivo's frames (https://www.plivo.com/docs/voice/xml/the-stream-element):
in ``start`` (``start.callId``, ``start.streamId``, ``start.mediaFormat``),
``media``, ``dtmf``, ``playedStream`` (a checkpoint played), ``clearedAudio``;
out ``playAudio`` (with the audio's ``contentType`` and ``sampleRate``),
``checkpoint`` and ``clearAudio``. Audio is μ-law at 8 kHz or L16 at 8 or
16 kHz; Plivo does not say L16's byte order, and little-endian is assumed.
"""

from __future__ import annotations

from livetx.telephony import Carrier, Event, Frame, Ignored, Mark, Start
from livetx.telephony.codec import L16, MULAW, AudioFormat
from livetx.telephony.frames import b64, common, section, start_of, text, unknown, unsupported

FORMATS = {("audio/x-mulaw", 8000): MULAW, ("audio/x-l16", 8000): L16, ("audio/x-l16", 16000): L16}
CONTENT_TYPES = {MULAW: "audio/x-mulaw", L16: "audio/x-l16"}


class Plivo:
    name = "plivo"
    sequence_field = "sequenceNumber"

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
