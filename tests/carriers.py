"""Fake carriers: each speaks its carrier's documented stream frames over a real socket, at real time,
and asks the answer webhook as the carrier does, signed as the carrier documents it.

A fake plays the server's reply audio as a phone would, 20 ms at a time,
and echoes each mark once the audio before it has played (and, when
``clear`` drops the audio, says what its carrier says: Twilio returns every
pending mark at once, Vonage ``websocket:cleared``). The signatures are
made here from the carriers' descriptions, never with the server's code.
"""

from __future__ import annotations

import array
import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode
from xml.etree import ElementTree

import jwt
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
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
    sequence_key: str | None = "sequenceNumber"
    #: Whether the carrier says ``connected`` before ``start``.
    says_connected = True

    def __init__(self, audio: AudioFormat) -> None:
        self.audio = audio

    def start(self, stream: str, call: str, parameters: dict[str, str]) -> dict[str, Any]:
        raise NotImplementedError

    def opening(self, stream: str, call: str, parameters: dict[str, str]) -> list[tuple[dict[str, Any], bool]]:
        """What the carrier sends first, each with whether it is numbered."""
        connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        return [(connected, False)] * self.says_connected + [(self.start(stream, call, parameters), True)]

    def cleared(self, stream: str, marks: list[str]) -> list[dict[str, Any]]:
        """What the carrier says once ``clear`` dropped the audio: Twilio returns the marks of the audio it dropped."""
        return [self.mark(stream, name) for name in marks]

    def media(self, stream: str, payload: bytes, chunk: int, ms: int) -> dict[str, Any] | bytes:
        return {"event": "media", self.stream_key: stream,
                "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(ms),
                          "payload": base64.b64encode(payload).decode()}}

    def dtmf(self, stream: str, digit: str) -> dict[str, Any]:
        return {"event": "dtmf", self.stream_key: stream, "dtmf": {"track": "inbound_track", "digit": digit}}

    def mark(self, stream: str, name: str) -> dict[str, Any]:
        return {"event": "mark", self.stream_key: stream, "mark": {"name": name}}

    def stop(self, stream: str, call: str) -> dict[str, Any] | None:
        return {"event": "stop", self.stream_key: stream, "stop": {"callSid": call}}

    # What the server sends: (kind, payload or mark name).
    def read(self, message: bytes, binary: bool) -> tuple[str, Any]:
        frame = json.loads(message)
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
            "user_id": "u1", "call_control_id": call, "client_state": "", "custom_parameters": parameters,
            "media_format": {"encoding": self.ENCODINGS[self.audio.encoding], "sample_rate": self.audio.rate,
                             "channels": 1}}}

    def stop(self, stream: str, call: str) -> dict[str, Any]:
        return {"event": "stop", "stream_id": stream, "stop": {"call_control_id": call}}


class PlivoShape(Shape):
    stream_key = "streamId"
    says_connected = False

    def start(self, stream: str, call: str, parameters: dict[str, str]) -> dict[str, Any]:
        encoding = "audio/x-mulaw" if self.audio.encoding == "mulaw" else "audio/x-l16"
        return {"event": "start", "start": {
            "callId": call, "streamId": stream, "accountId": "MA0000", "tracks": ["inbound"],
            "mediaFormat": {"encoding": encoding, "sampleRate": self.audio.rate}},
            "extra_headers": ",".join(f"{k}={v}" for k, v in parameters.items())}

    def mark(self, stream: str, name: str) -> dict[str, Any]:
        return {"event": "playedStream", "streamId": stream, "name": name}

    def read(self, message: bytes, binary: bool) -> tuple[str, Any]:
        frame = json.loads(message)
        kind = frame["event"]
        if kind == "playAudio":
            media = frame["media"]
            return "media", (base64.b64decode(media["payload"]), media["contentType"], media["sampleRate"])
        if kind == "checkpoint":
            return "mark", frame["name"]
        if kind == "clearAudio":
            return "clear", None
        return kind, None


class VonageShape(Shape):
    """Vonage's WebSocket: binary 20 ms PCM both ways, JSON events, nothing numbered, no stream id."""

    sequence_key = None

    def opening(self, stream: str, call: str, parameters: dict[str, str]) -> list[tuple[dict[str, Any], bool]]:
        # The NCCO endpoint's headers arrive at the top level of the first message.
        return [({"event": "websocket:connected", "content-type": f"audio/l16;rate={self.audio.rate}",
                  "call": call, **parameters}, False)]

    def media(self, stream: str, payload: bytes, chunk: int, ms: int) -> dict[str, Any] | bytes:
        return payload

    def dtmf(self, stream: str, digit: str) -> dict[str, Any]:
        return {"event": "websocket:dtmf", "digit": digit, "duration": 260}

    def mark(self, stream: str, name: str) -> dict[str, Any]:
        return {"event": "websocket:notify", "payload": {"name": name}}

    def cleared(self, stream: str, marks: list[str]) -> list[dict[str, Any]]:
        return [{"event": "websocket:cleared"}]

    def stop(self, stream: str, call: str) -> dict[str, Any] | None:
        return None  # the caller hanging up closes the socket

    def read(self, message: bytes, binary: bool) -> tuple[str, Any]:
        if binary:
            return "media", message
        frame = json.loads(message)
        if frame["action"] == "notify":
            return "mark", frame["payload"]["name"]
        return frame["action"], None


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
        #: (kind, value) with the caller's stream position when it came: timings in stream time are
        #: what the server was given, however fast this machine is (wall time failed under load).
        self.received: list[tuple[int, str, Any]] = []  # (ms of caller audio sent by then, kind, value)
        self.sequence = 0
        self.chunk = 0
        self.sent_ms = 0
        #: Where in the caller's stream (ms) the voice was first audible since :meth:`say` (barge-in timing).
        self.onset: int | None = None
        self._outbox = bytearray()  # caller audio still to send, in the wire format
        self._playing: list[Any] = []  # reply audio (bytes) and marks (str), in order
        self.played = bytearray()
        self.echoed: list[str] = []  # the marks echoed once played
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._waiters: list[tuple[Any, Deferred[None]]] = []

    def onOpen(self) -> None:
        self.ready.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        kind, value = self.shape.read(payload, isBinary)
        self.received.append((self.sent_ms, kind, value))
        if kind == "media":
            self._playing.append(value if isinstance(value, bytes) else value[0])
        elif kind == "mark":
            self._playing.append(value)
        elif kind == "clear":
            marks = [m for m in self._playing if isinstance(m, str)]
            self._playing = []
            for frame in self.shape.cleared(self.stream, marks):  # not in ``echoed``: they never played
                self.send(frame)
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

    def send(self, frame: dict[str, Any] | bytes, numbered: bool = True) -> None:
        if self.state != self.STATE_OPEN:  # the server closed the call: the line says nothing more
            return
        if isinstance(frame, bytes):
            self.sendMessage(frame, isBinary=True)
            return
        if numbered and self.shape.sequence_key is not None:
            self.sequence += 1
            frame = {**frame, self.shape.sequence_key: str(self.sequence)}
        self.sendMessage(json.dumps(frame).encode())

    def begin(self) -> None:
        """The carrier's opening (``connected`` and ``start``), then the line streams (silence when the caller
        says nothing)."""
        for frame, numbered in self.shape.opening(self.stream, self.call_id, self.parameters):
            self.send(frame, numbered)
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
            self.onset = self.sent_ms  # the packet's start
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

    def of(self, kind: str) -> list[tuple[int, Any]]:
        return [(t, v) for t, k, v in self.received if k == kind]

    def hang_up(self) -> None:
        """The caller hangs up: ``stop``, then the carrier closes the socket."""
        if self._loop.running:
            self._loop.stop()
        stop = self.shape.stop(self.stream, self.call_id)
        if stop is not None:
            self.send(stop)
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


# -- the answer webhooks, asked as each carrier asks ---------------------------------


@dataclass(frozen=True)
class Ask:
    """One answer request: what a carrier sends to the number's answer URL."""

    method: str
    url: str
    headers: dict[str, list[str]]
    body: bytes


class Line:
    """One carrier's answer webhook as the carrier calls it; ``key`` signs (None: unsigned)."""

    name: str
    #: The key that signs its requests, and one that is not the account's.
    key: Any
    wrong_key: Any

    def ask(self, url: str, caller: str, call: str, key: Any, now: float) -> Ask:
        raise NotImplementedError

    def stream(self, document: bytes) -> tuple[str, dict[str, str]]:
        """The stream URL and the parameters the answer document hands the stream."""
        raise NotImplementedError


def mac(key: str, data: str, digest: Any) -> str:
    return base64.b64encode(hmac.new(key.encode(), data.encode(), digest).digest()).decode()


class FormLine(Line):
    """A carrier that POSTs the call's fields form-encoded (Twilio's, and TeXML's alike)."""

    call_field = "CallSid"

    def signature(self, url: str, fields: dict[str, str], body: bytes, key: Any, now: float) -> dict[str, list[str]]:
        raise NotImplementedError

    def ask(self, url: str, caller: str, call: str, key: Any, now: float) -> Ask:
        fields = {self.call_field: call, "From": caller, "To": "+15550000000", "AccountSid": "AC1"}
        body = urlencode(fields).encode()
        headers = {"Content-Type": ["application/x-www-form-urlencoded"]}
        if key is not None:
            headers.update(self.signature(url, fields, body, key, now))
        return Ask("POST", url, headers, body)

    def stream(self, document: bytes) -> tuple[str, dict[str, str]]:
        element = ElementTree.fromstring(document).find("Connect/Stream")
        assert element is not None
        return element.get("url") or "", {p.get("name") or "": p.get("value") or ""
                                          for p in element.findall("Parameter")}


class TwilioLine(FormLine):
    """HMAC-SHA1 with the auth token over the URL and the sorted parameters, Base64."""

    name = "twilio"
    key = "test-twilio-auth-token"
    wrong_key = "another-twilio-token"

    def signature(self, url: str, fields: dict[str, str], body: bytes, key: Any, now: float) -> dict[str, list[str]]:
        return {"X-Twilio-Signature": [mac(key, url + "".join(k + fields[k] for k in sorted(fields)), hashlib.sha1)]}


class TelnyxLine(FormLine):
    """TeXML: Twilio's form fields; Ed25519 over ``{timestamp}|{body}``, the account's key pair."""

    name = "telnyx"

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.wrong_key = Ed25519PrivateKey.generate()

    @property
    def public_key(self) -> str:
        return base64.b64encode(self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

    def signature(self, url: str, fields: dict[str, str], body: bytes, key: Any, now: float) -> dict[str, list[str]]:
        stamp = str(int(now))
        return {"telnyx-timestamp": [stamp],
                "telnyx-signature-ed25519": [base64.b64encode(key.sign(f"{stamp}|".encode() + body)).decode()]}

    def stream(self, document: bytes) -> tuple[str, dict[str, str]]:
        url, parameters = super().stream(document)
        rtp = ElementTree.fromstring(document).find("Connect/Stream[@bidirectionalMode='rtp']")
        assert parameters == {} and rtp is not None
        return url, parameters  # the token rides in the URL's query


class PlivoLine(FormLine):
    """HMAC-SHA256 with the auth token over the URL, ``?``, each sorted parameter's name and value, ``.``
    and the nonce (a POST to a URL without a query)."""

    name = "plivo"
    key = "test-plivo-auth-token"
    wrong_key = "another-plivo-token"
    call_field = "CallUUID"

    def signature(self, url: str, fields: dict[str, str], body: bytes, key: Any, now: float) -> dict[str, list[str]]:
        nonce = "12345678901234567890"
        data = f"{url}?{''.join(k + fields[k] for k in sorted(fields))}.{nonce}"
        return {"X-Plivo-Signature-V3": [mac(key, data, hashlib.sha256)], "X-Plivo-Signature-V3-Nonce": [nonce]}

    def stream(self, document: bytes) -> tuple[str, dict[str, str]]:
        element = ElementTree.fromstring(document).find("Stream")
        assert element is not None and element.get("bidirectional") == "true"
        pairs = (item.split("=", 1) for item in (element.get("extraHeaders") or "").split(","))
        return (element.text or "").strip(), dict(pairs)


class VonageLine(Line):
    """The answer URL asked with GET (Vonage's default); a JWT signed HS256 with the signature secret,
    its ``payload_hash`` the SHA-256 of the parameters as compact JSON."""

    name = "vonage"
    key = "test-vonage-signature-secret-0123"
    wrong_key = "another-vonage-signature-secret!"

    def ask(self, url: str, caller: str, call: str, key: Any, now: float) -> Ask:
        fields = {"to": "447700900000", "from": caller, "uuid": call, "conversation_uuid": f"CON-{call}"}
        headers: dict[str, list[str]] = {}
        if key is not None:
            digest = hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()
            claims = {"iat": int(now), "jti": "6f1c", "iss": "Vonage", "payload_hash": digest, "api_key": "abcd1234",
                      "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"}
            headers["Authorization"] = [f"Bearer {jwt.encode(claims, key, algorithm='HS256')}"]
        return Ask("GET", f"{url}?{urlencode(fields)}", headers, b"")

    def stream(self, document: bytes) -> tuple[str, dict[str, str]]:
        (action,) = json.loads(document)
        (endpoint,) = action["endpoint"]
        assert action["action"] == "connect" and endpoint["type"] == "websocket"
        assert endpoint["content-type"] == "audio/l16;rate=16000"
        return endpoint["uri"], endpoint["headers"]


LINES: dict[str, Line] = {line.name: line for line in (TwilioLine(), TelnyxLine(), PlivoLine(), VonageLine())}


def line_settings() -> str:
    """The ``[telephony]`` secrets that check every line's signatures."""
    telnyx = LINES["telnyx"]
    assert isinstance(telnyx, TelnyxLine)
    return (f'twilio_auth_token = "{LINES["twilio"].key}"\ntelnyx_public_key = "{telnyx.public_key}"\n'
            f'plivo_auth_token = "{LINES["plivo"].key}"\nvonage_signature_secret = "{LINES["vonage"].key}"')


async def ask(url: str, line: Line, caller: str, call: str, key: Any, now: float | None = None,
              change: Callable[[Ask], Ask] = lambda request: request) -> tuple[int, bytes]:
    """The answer webhook's status and document for a call from ``caller`` (the request ``change``d
    after it was signed)."""
    request = change(line.ask(url, caller, call, key, reactor.seconds() if now is None else now))
    response = await treq.request(request.method, request.url, data=request.body or None, headers=request.headers,
                                  reactor=reactor)
    return response.code, await response.content()
