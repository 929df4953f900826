"""Vonage Voice API WebSockets: binary linear PCM both ways, JSON text events.

As Vonage documents it
(https://developer.vonage.com/en/voice/voice-api/concepts/websockets):
the first message is text, ``websocket:connected`` with the audio's
``content-type`` (``audio/l16;rate=16000`` or ``rate=8000``) and the
``headers`` the answering NCCO gave its ``websocket`` endpoint, at the top
level; then every binary message is 20 ms of 16-bit little-endian PCM, and
text messages are events: ``websocket:dtmf`` (``digit``),
``websocket:notify`` (the ``payload`` of a ``notify`` we sent, once the
audio before it has played) and ``websocket:cleared`` (a ``clear`` was
done). Out: binary 20 ms messages of the same audio (each exactly 320 or
640 bytes), ``{"action": "notify", "payload": ...}`` and
``{"action": "clear"}``. No frame names a stream or is numbered: the socket
is the call, and the call's id is the ``call`` header the NCCO gave
(:data:`ANSWER`, whose webhook is signed with Vonage's JWT).
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, urlsplit

import orjson

from livetx.errors import ErrorCode
from livetx.telephony import Carrier, CarrierError, Dtmf, Event, Frame, Ignored, Mark, Media, Start
from livetx.telephony.codec import L16, AudioFormat
from livetx.telephony.frames import parameters, section, text, unknown, unsupported
from livetx.telephony.webhook import FRESH_SECONDS, JSON, Answering, Incoming

#: Every audio message is this long, exactly (Vonage takes no other size).
PACKET_MS = 20
RATES = {"audio/l16;rate=16000": 16000, "audio/l16;rate=8000": 8000}
#: The ``connected`` event's fields that are Vonage's own, not the NCCO's headers.
OWN = ("event", "content-type")


class Vonage:
    name = "vonage"
    sequence_field: str | None = None
    piece_ms = PACKET_MS
    #: Vonage buffers 1,024 messages, "around 20 seconds of audio"; longer replies must be paced.
    ahead_ms: int | None = 15_000

    def parse(self, frame: Frame) -> Event:
        event = frame.get("event")
        if event == "websocket:connected":
            kind = frame.get("content-type")
            rate = RATES.get(kind.replace(" ", "").lower()) if isinstance(kind, str) else None
            if rate is None:
                raise unsupported(kind, None)
            call = text(frame, "call", "websocket:connected")
            headers = parameters({k: v for k, v in frame.items() if k not in OWN})
            return Start(call, call, AudioFormat(L16, rate), headers)
        if event == "websocket:dtmf":
            return Dtmf(None, text(frame, "digit", "websocket:dtmf"))
        if event == "websocket:notify":
            return Mark(None, text(section(frame, "payload"), "name", "payload"))
        if isinstance(event, str) and event.startswith("websocket:"):
            # ``websocket:cleared``, and what Vonage may add: "examine the event field … if it is of interest".
            return Ignored()
        raise unknown(event)

    def binary(self, payload: bytes) -> Event:
        if not payload:
            raise CarrierError(ErrorCode.INVALID_AUDIO, "empty audio message")
        return Media(None, payload)

    def media(self, stream_id: str, audio: bytes, fmt: AudioFormat) -> Frame | bytes:
        # The reply's last piece is padded with silence: Vonage plays whole 20 ms messages only.
        size = int(PACKET_MS * fmt.bytes_per_ms)
        return audio + b"\x00" * (size - len(audio))

    def mark(self, stream_id: str, name: str) -> Frame:
        return {"action": "notify", "payload": {"name": name}}

    def clear(self, stream_id: str) -> Frame:
        return {"action": "clear"}


CARRIER: Carrier = Vonage()


# -- the answer webhook --------------------------------------------------------------


def payload_hashes(incoming: Incoming) -> set[str]:
    """What Vonage's ``payload_hash`` claim may be for this request: the SHA-256 (hex) of the body, or of
    its fields as compact JSON (the query's for a GET, in their order), as Vonage describes it."""
    if incoming.method == "GET":
        query = urlsplit(incoming.url).query
        return {hashlib.sha256(orjson.dumps(dict(parse_qsl(query, keep_blank_values=True)))).hexdigest()}
    hashes = {hashlib.sha256(incoming.body).hexdigest()}
    try:
        hashes.add(hashlib.sha256(orjson.dumps(orjson.loads(incoming.body))).hexdigest())
    except orjson.JSONDecodeError:
        pass
    return hashes


def vonage_signed(secret: str, incoming: Incoming, now: float) -> bool:
    """Whether the request carries ``Authorization: Bearer`` a JWT signed HS256 with the signature secret,
    issued within :data:`FRESH_SECONDS` of ``now``, whose ``payload_hash`` (when it has one) is this
    request's (https://developer.vonage.com/en/getting-started/concepts/webhooks#decoding-signed-webhooks)."""
    import jwt

    scheme, _, token = (incoming.header("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    try:
        # ``iat`` is checked below, against the server's clock (the reactor's), not PyJWT's.
        claims = jwt.decode(token.strip(), secret, algorithms=["HS256"],
                            options={"require": ["iat"], "verify_iat": False})
    except jwt.InvalidTokenError:
        return False
    issued = claims["iat"]
    if not isinstance(issued, (int, float)) or abs(now - issued) > FRESH_SECONDS:
        return False
    expected = claims.get("payload_hash")
    return expected is None or (isinstance(expected, str) and expected.lower() in payload_hashes(incoming))


class VonageAnswer:
    """An NCCO ``connect`` to the ``websocket`` endpoint, for a request signed with Vonage's JWT.

    The answer URL is asked with GET by default (``answer_method``: POST sends JSON) with ``from`` and
    ``uuid``. The NCCO's endpoint ``headers`` carry the caller, the call's uuid and the call token: the
    stream's ``websocket:connected`` brings them back. Closing the socket ends the NCCO, and the call.
    """

    title = "Vonage"
    signature_header = "Authorization"
    bodies: tuple[str, ...] = (JSON,)
    gets = True
    caller_field = "from"
    call_field = "uuid"

    def signed(self, incoming: Incoming, secret: str, now: float) -> bool:
        return vonage_signed(secret, incoming, now)

    def answer(self, stream: str, caller: str, call: str, token: str) -> tuple[bytes, str]:
        endpoint = {"type": "websocket", "uri": stream, "content-type": "audio/l16;rate=16000",
                    "headers": {"caller": caller, "call": call, "token": token}}
        return orjson.dumps([{"action": "connect", "endpoint": [endpoint]}]), JSON

    def refuse(self) -> tuple[bytes, str]:
        return b"[]", JSON  # "When all the actions in the NCCO are complete, the Call ends."


ANSWER: Answering = VonageAnswer()
