"""Telnyx media streaming over WebSocket, bidirectional (``stream_bidirectional_mode: rtp``).

Telnyx's frames (https://developers.telnyx.com/docs/voice/programmable-voice/media-streaming)
are Twilio's in snake case: ``stream_id``, ``sequence_number``,
``start.call_control_id`` and ``start.media_format`` with ``encoding``
(PCMU, PCMA or L16) and ``sample_rate`` (8000 or 16000). The payloads are
RTP payloads, so L16 is big-endian (RFC 3551). Out: ``media``,
``mark`` and ``clear``, which carry no stream id (the socket is the stream).
"""

from __future__ import annotations

from livetx.telephony import Carrier, Event, Frame, Ignored, Start
from livetx.telephony.codec import ALAW, L16, MULAW, AudioFormat
from livetx.telephony.frames import b64, common, parameters, section, start_of, text, unknown, unsupported

ENCODINGS = {"PCMU": MULAW, "PCMA": ALAW, "L16": L16}
RATES = (8000, 16000)


class Telnyx:
    name = "telnyx"
    sequence_field = "sequence_number"

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
