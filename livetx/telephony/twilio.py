"""Twilio Media Streams, bidirectional (``<Connect><Stream>``).

The frames, field for field, as Twilio documents them
(https://www.twilio.com/docs/voice/media-streams/websocket-messages):
in ``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``; out
``media``, ``mark``, ``clear``, each with the ``streamSid``. Audio is always
μ-law at 8 kHz, mono.
"""

from __future__ import annotations

from livetx.telephony import Carrier, Event, Frame, Start
from livetx.telephony.codec import MULAW, AudioFormat
from livetx.telephony.frames import b64, common, parameters, section, start_of, text, unknown, unsupported

#: The one format Twilio streams.
TWILIO_AUDIO = AudioFormat(MULAW, 8000)


class Twilio:
    name = "twilio"
    sequence_field = "sequenceNumber"

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
