"""Fake carriers: each speaks its carrier's documented stream frames over a real socket, at real time.

A fake plays the server's reply audio as a phone would, 20 ms at a time,
and echoes each mark once the audio before it has played (and, as Twilio
does, every pending mark at once when ``clear`` drops the audio).
"""

from __future__ import annotations

import array
import base64
import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import LoopingCall

from livetx.telephony.codec import AudioFormat, Inbound

from .support import TIMEOUT, Waiting

TICK = 0.02


class Shape:
    """A carrier's frame names (the server's modules are not used to write them)."""

    stream_key = "streamSid"
    sequence_key = "sequenceNumber"

    def __init__(self, audio: AudioFormat) -> None:
        self.audio = audio

    def start(self, stream: str, call: str, parameters: dict[str, str]) -> dict[str, Any]:
        raise NotImplementedError

    def media(self, stream: str, payload: bytes, chunk: int, ms: int) -> dict[str, Any]:
        return {"event": "media", self.stream_key: stream,
                "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(ms),
                          "payload": base64.b64encode(payload).decode()}}

    def dtmf(self, stream: str, digit: str) -> dict[str, Any]:
        return {"event": "dtmf", self.stream_key: stream, "dtmf": {"track": "inbound_track", "digit": digit}}

    def mark(self, stream: str, name: str) -> dict[str, Any]:
        return {"event": "mark", self.stream_key: stream, "mark": {"name": name}}

    def stop(self, stream: str, call: str) -> dict[str, Any]:
        return {"event": "stop", self.stream_key: stream, "stop": {"callSid": call}}

    # What the server sends: (kind, payload or mark name).
    def read(self, frame: dict[str, Any]) -> tuple[str, Any]:
        kind = frame["event"]
        if kind == "media":
            return "media", base64.b64decode(frame["media"]["payload"])
        if kind == "mark":
            return "mark", frame["mark"]["name"]
        return kind, None


class TwilioShape(Shape):
    def start(self, stream: str, call: str, parameters: dict[str, str]) -> dict[str, Any]:
        return {"event": "start", "streamSid": stream, "start": {
            "streamSid": stream, "accountSid": "AC0000", "callSid": call, "tracks": ["inbound"],
            "customParameters": parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


class TelnyxShape(Shape):
    stream_key = "stream_id"
    sequence_key = "sequence_number"
    ENCODINGS = {"mulaw": "PCMU", "alaw": "PCMA", "l16": "L16"}

    def start(self, stream: str, call: str, parameters: dict[str, str]) -> dict[str, Any]:
        return {"event": "start", "stream_id": stream, "start": {
            "user_id": "u1", "call_control_id": call, "client_state": "",
            "media_format": {"encoding": self.ENCODINGS[self.audio.encoding], "sample_rate": self.audio.rate,
                             "channels": 1}}}

    def stop(self, stream: str, call: str) -> dict[str, Any]:
        return {"event": "stop", "stream_id": stream, "stop": {"call_control_id": call}}


class PlivoShape(Shape):
    stream_key = "streamId"

    def start(self, stream: str, call: str, parameters: dict[str, str]) -> dict[str, Any]:
        encoding = "audio/x-mulaw" if self.audio.encoding == "mulaw" else "audio/x-l16"
        return {"event": "start", "start": {
            "callId": call, "streamId": stream, "accountId": "MA0000", "tracks": ["inbound"],
            "mediaFormat": {"encoding": encoding, "sampleRate": self.audio.rate}}, "extra_headers": ""}

    def mark(self, stream: str, name: str) -> dict[str, Any]:
        return {"event": "playedStream", "streamId": stream, "name": name}

    def read(self, frame: dict[str, Any]) -> tuple[str, Any]:
        kind = frame["event"]
        if kind == "playAudio":
            media = frame["media"]
            return "media", (base64.b64decode(media["payload"]), media["contentType"], media["sampleRate"])
        if kind == "checkpoint":
            return "mark", frame["name"]
        if kind == "clearAudio":
            return "clear", None
        return kind, None


class FakeCarrier(Waiting, WebSocketClientProtocol):
    """One call as a carrier streams it."""

    shape: Shape
    stream = "MZ0001"
    call_id = "CA0001"
    parameters: dict[str, str] = {}

    def __init__(self) -> None:
        super().__init__()
        self.ready: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.close_code: int | None = None
        self.received: list[tuple[float, str, Any]] = []  # (time, kind, value)
        self.sequence = 0
        self.chunk = 0
        self.sent_ms = 0
        #: When the caller's voice was first audible since :meth:`say` (for barge-in timing).
        self.onset: float | None = None
        self._outbox = bytearray()  # caller audio still to send, in the wire format
        self._playing: list[Any] = []  # reply audio (bytes) and marks (str), in order
        self.played = bytearray()
        self.echoed: list[str] = []
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._waiters: list[tuple[Any, Deferred[None]]] = []

    def onOpen(self) -> None:
        self.ready.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        kind, value = self.shape.read(json.loads(payload))
        self.received.append((reactor.seconds(), kind, value))
        if kind == "media":
            self._playing.append(value if isinstance(value, bytes) else value[0])
        elif kind == "mark":
            self._playing.append(value)
        elif kind == "clear":
            marks = [m for m in self._playing if isinstance(m, str)]
            self._playing = []
            for name in marks:  # Twilio returns the marks of the audio it dropped
                self._echo(name)
        self._wake()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = code
        if self._loop.running:
            self._loop.stop()
        if not self.ready.called:
            self.ready.callback(None)
        if not self.closed.called:
            self.closed.callback(None)
        self._wake()

    def send(self, frame: dict[str, Any], numbered: bool = True) -> None:
        if numbered:
            self.sequence += 1
            frame = {**frame, self.shape.sequence_key: str(self.sequence)}
        self.sendMessage(json.dumps(frame).encode())

    def begin(self) -> None:
        """``connected`` and ``start``, then the line streams (silence when the caller says nothing)."""
        if isinstance(self.shape, (TwilioShape, TelnyxShape)):
            self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"}, numbered=False)
        self.send(self.shape.start(self.stream, self.call_id, self.parameters))
        self._loop.start(TICK, now=False)

    def say(self, pcm16k: bytes) -> None:
        """Queue caller speech (16 kHz PCM16), sent in real time in 20 ms packets."""
        self._outbox += self.shape.audio.to_wire(pcm16k, 16_000)
        self.onset = None

    def _tick(self) -> None:
        step = int(20 * self.shape.audio.bytes_per_ms)
        piece = bytes(self._outbox[:step])
        del self._outbox[:step]
        piece += (b"\xff" if self.shape.audio.encoding == "mulaw" else b"\xd5" if self.shape.audio.encoding == "alaw"
                  else b"\x00") * (step - len(piece))
        if self.onset is None and max(abs(s) for s in array.array("h", decoded_at_rate(piece, self.shape.audio))) > 300:
            self.onset = reactor.seconds()
        self.chunk += 1
        self.sent_ms += 20
        self.send(self.shape.media(self.stream, piece, self.chunk, self.sent_ms))
        self._play(step)

    def _play(self, size: int) -> None:
        """Play ``size`` bytes of reply audio; echo each mark reached."""
        while self._playing:
            head = self._playing[0]
            if isinstance(head, str):
                self._playing.pop(0)
                self._echo(head)
                continue
            if size <= 0:
                break
            taken = head[:size]
            self.played += taken
            size -= len(taken)
            if len(taken) == len(head):
                self._playing.pop(0)
            else:
                self._playing[0] = head[len(taken):]
        self._wake()

    def _echo(self, name: str) -> None:
        self.echoed.append(name)
        if self.state == self.STATE_OPEN:
            self.send(self.shape.mark(self.stream, name))

    @property
    def speaking(self) -> bool:
        return bool(self._outbox)

    def of(self, kind: str) -> list[tuple[float, Any]]:
        return [(t, v) for t, k, v in self.received if k == kind]

    def hang_up(self) -> None:
        """The caller hangs up: ``stop``, then the carrier closes the socket."""
        if self._loop.running:
            self._loop.stop()
        self.send(self.shape.stop(self.stream, self.call_id))
        self.sendClose(1000)


async def dial(url: str, shape: Shape, parameters: dict[str, str] | None = None,
               call_id: str = "CA0001") -> FakeCarrier:
    factory = WebSocketClientFactory(url)
    factory.protocol = FakeCarrier
    endpoint = TCP4ClientEndpoint(reactor, factory.host, factory.port, timeout=5)
    carrier: FakeCarrier = await endpoint.connect(factory)
    carrier.shape = shape
    carrier.parameters = parameters or {}
    carrier.call_id = call_id
    await carrier.ready.addTimeout(TIMEOUT, reactor)
    return carrier


def decoded(payload: bytes, audio: AudioFormat) -> bytes:
    """Reply audio from the wire as 16 kHz PCM16 (what a recognizer takes)."""
    return Inbound(audio).feed(payload)


def decoded_at_rate(payload: bytes, audio: AudioFormat) -> bytes:
    """Wire audio as PCM16 at its own rate."""
    return audio.to_pcm(payload)
