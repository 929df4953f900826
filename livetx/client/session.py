"""One turn against a Live API server, over Autobahn's WebSocket client.

:func:`run_turn` connects, sends a text or voice turn, follows the reply
until ``end`` (or ``stop_play`` after an interrupt), and fires with a
:class:`TurnReport`. What the user sees is left to a :class:`FrameListener`.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_pem_x509_certificates
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.python.failure import Failure
from twisted.internet.ssl import (
    Certificate, CertificateOptions, optionsForClientTLS, trustRootFromCertificates,
)

from livetx.auth import tokens
from livetx.client.audio import UPLOAD_FRAME_BYTES, frames
from livetx.config import DATA_DIR_VARIABLE
from livetx.errors import CloseCode

#: Exit codes a script can rely on.
OK, TURN_FAILED, USAGE, CONNECTION_FAILED, TIMED_OUT, NOTHING_HEARD, REFUSED = 0, 1, 2, 3, 4, 5, 6

#: Close reasons (JWT endpoints) and error codes (Open API) that mean: the credential was refused.
CREDENTIAL_REASONS = frozenset({tokens.MISSING, tokens.EXPIRED, tokens.INVALID})
UNAUTHORIZED = "UNAUTHORIZED"
#: Said with every refused credential except an expired token: the usual cause is a
#: token or key made against another data dir than the server's.
ANOTHER_DATA_DIR = (
    "the server may keep its secret and keys elsewhere than where this one was made: give livetx token "
    "and livetx keys the server's --config (its [store] url or [auth] jwt_secret) "
    f"and --data-dir (or ${DATA_DIR_VARIABLE})"
)

LIVE_PATH = "/api/live_chat/ws"
OPEN_API_PATH = "/api/v1/live/ws"


class ClientError(Exception):
    """A problem worth one line to the user and an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = code
        self.message = message


def socket_address(
    url: str, token: str | None, api_key: str | None, username: str | None
) -> tuple[str, dict[str, str]]:
    """The socket URL and headers for a server URL and credentials.

    A URL without a path gets the endpoint the credential opens: a JWT the
    dashboard live socket, an API key the Open API socket. The key travels
    in a header, not the URL, so it stays out of logs on the way.
    """
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ClientError(USAGE, f"URL must be ws://, wss://, http:// or https://, not {parts.scheme}://")
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    if token:
        query["token"] = token
        default_path = LIVE_PATH
    elif api_key and username:
        headers["X-API-Key"] = api_key
        query["username"] = username
        default_path = OPEN_API_PATH
    else:
        raise ClientError(USAGE, "give --token, or --api-key with --username")
    path = parts.path if parts.path not in ("", "/") else default_path
    extra = parts.query + "&" if parts.query else ""
    return urlunsplit((scheme, parts.netloc, path, extra + urlencode(query), "")), headers


@dataclass(frozen=True)
class TurnRequest:
    """What to send: ``text``, or ``pcm`` (16 kHz mono PCM16) as a voice segment."""

    text: str | None = None
    pcm: bytes | None = None
    interrupt_after: float | None = None
    realtime: bool = False
    timeout: float = 60.0


@dataclass
class TurnReport:
    """What came back."""

    exit_code: int = OK
    heard: str | None = None
    reply: str = ""
    captions: list[str] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Measured here: seconds from the end of the input (the text sent, or ``end_speaking``:
    #: the user's last word, also at speaking pace) to the first delta, audio, end.
    timings: dict[str, float] = field(default_factory=dict)
    error: tuple[str, str] | None = None
    interrupted: bool = False


class FrameListener(Protocol):
    def frame(self, frame: dict[str, Any]) -> None:
        """Every frame received, in order."""


class _Socket(WebSocketClientProtocol):
    """Hands what happens on the socket to its factory's driver."""

    def onOpen(self) -> None:
        self.factory.driver.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            return
        if isinstance(frame, dict):
            self.factory.driver.received(frame)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(SSL.Error, VerificationError) is not None:
            self.factory.driver.refused_certificate(reason.value)
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.driver.closed(code, reason)

    def send(self, frame: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(frame).encode("utf-8"))


class _TurnDriver:
    """Sends one turn and follows its frames to the end."""

    def __init__(self, reactor: Any, request: TurnRequest, listener: FrameListener) -> None:
        self.reactor = reactor
        self.request = request
        self.listener = listener
        self.report = TurnReport()
        self.done: Deferred[TurnReport] = Deferred()
        self.socket: _Socket | None = None
        #: When the input ended: the text, or ``end_speaking``, was sent.
        self.sent_at = 0.0
        self._calls: list[Any] = []

    def _later(self, seconds: float, f: Any, *args: Any) -> None:
        self._calls.append(self.reactor.callLater(seconds, f, *args))

    def opened(self, socket: _Socket) -> None:
        self.socket = socket
        request = self.request
        self._later(request.timeout, self.finish, TIMED_OUT, f"no reply within {request.timeout:g} s")
        if request.text is not None:
            self._end_input({"t": "text_input", "text": request.text})
            return
        stamp = uuid.uuid4().hex
        socket.send({"t": "start_speaking", "stamp": stamp})
        if not request.realtime:
            # A recording goes up at once in 100 ms frames: the server counts
            # messages, not bytes, so a 60 s segment (its longest) is 600
            # messages, inside its default burst allowance; 20 ms frames
            # would be 3000 and be refused with RATE_LIMITED.
            for chunk in frames(request.pcm or b"", UPLOAD_FRAME_BYTES):
                self._send_part(chunk)
            self._end_input({"t": "end_speaking", "stamp": stamp})
            return
        chunks = list(frames(request.pcm or b""))
        for i, chunk in enumerate(chunks):  # as a microphone would: one frame per 20 ms
            self._later(i * 0.02, self._send_part, chunk)
        self._later(len(chunks) * 0.02, self._end_input, {"t": "end_speaking", "stamp": stamp})

    def _end_input(self, frame: dict[str, Any]) -> None:
        """Send the frame that ends the input; the client's timings count from here."""
        self.sent_at = self.reactor.seconds()
        self._send(frame)

    def _send_part(self, chunk: bytes) -> None:
        self._send({"t": "speaking_part", "data": base64.b64encode(chunk).decode("ascii")})

    def _send(self, frame: dict[str, Any]) -> None:
        if self.socket is not None and not self.done.called:
            self.socket.send(frame)

    def _since_sent(self, name: str) -> None:
        self.report.timings.setdefault(name, self.reactor.seconds() - self.sent_at)

    def received(self, frame: dict[str, Any]) -> None:
        if self.done.called:
            return
        self.listener.frame(frame)
        kind, data, report = frame.get("t"), frame.get("data"), self.report
        if kind == "user_msg" and isinstance(data, dict):
            report.heard = data.get("text")
        elif kind == "bot_delta_chunk" and isinstance(data, dict):
            if not report.reply and self.request.interrupt_after is not None:
                self._later(self.request.interrupt_after, self._interrupt)
            self._since_sent("first_delta")
            report.reply += str(data.get("text", ""))
        elif kind == "bot_text_chunk" and isinstance(data, dict):
            report.captions.append(str(data.get("text", "")))
        elif kind == "response" and isinstance(data, str):
            self._since_sent("first_audio")
            report.audio.append(base64.b64decode(data))
        elif kind == "metrics" and isinstance(data, dict):
            report.metrics.update(data)  # all of a turn's metrics come before its ``end``
        elif kind == "error":
            report.error = (str(frame.get("code", "ERROR")), str(data))
            if report.error[0] == UNAUTHORIZED and "turn" not in frame:
                self.refused(str(data))
            elif "turn" not in frame:
                # Refused before any turn began (busy, AUDIO_TOO_LONG,
                # RATE_LIMITED, shutting down): no ``end`` will follow.
                self.finish(OK)
        elif kind == "end":
            self._since_sent("end")
            self.finish(OK)
        elif kind == "stop_play" and report.interrupted:
            self._since_sent("end")
            self.finish(OK)

    def _interrupt(self) -> None:
        if not self.done.called:
            self.report.interrupted = True
            self._send({"t": "interrupt"})

    def closed(self, code: int | None, reason: str | None) -> None:
        if self.done.called:
            return
        if code == CloseCode.POLICY_VIOLATION and reason in CREDENTIAL_REASONS:
            self.refused(reason or "")
            return
        why = f"{reason} ({code})" if reason else f"closed with code {code}"
        self.finish(CONNECTION_FAILED, f"the server closed the connection: {why}")

    def refused_certificate(self, error: Exception) -> None:
        """Our side ended the TLS handshake: the server is not at fault, and the fix is on this side."""
        if isinstance(error, VerificationError):
            why = "its subjectAltName does not name the host in the URL"
        else:  # OpenSSL's [(library, function, reason), ...]
            parts = error.args[0] if error.args and isinstance(error.args[0], list) else [(str(error),)]
            why = "; ".join(str(part[-1]) for part in parts)
        self.finish(
            CONNECTION_FAILED,
            f"the client refused the server's certificate ({why}); trust it with --cafile PEM, "
            "whose subjectAltName names the URL's host, or test with --insecure",
        )

    def refused(self, reason: str) -> None:
        """A refused token or key: one exit code for both kinds, and the likely cause."""
        hint = "make a new one with livetx token" if reason == tokens.EXPIRED else ANOTHER_DATA_DIR
        self.finish(REFUSED, f"the server refused the credential ({reason}); {hint}")

    def finish(self, exit_code: int, message: str | None = None) -> None:
        if self.done.called:
            return
        for call in self._calls:
            if call.active():
                call.cancel()
        report = self.report
        if exit_code == OK and report.error is not None:
            exit_code = TURN_FAILED  # the server reported an error frame
        elif exit_code == OK and self.request.pcm is not None and not report.heard:
            exit_code = NOTHING_HEARD  # the server found no words in the recording
        report.exit_code = exit_code
        if self.socket is not None and self.socket.state == self.socket.STATE_OPEN:
            self.socket.sendClose(1000)
        if message is not None:
            self.done.errback(ClientError(exit_code, message))
        else:
            self.done.callback(report)


@dataclass(frozen=True)
class Trust:
    """Which server certificates a ``wss://`` connection accepts."""

    #: PEM file of the certificates (a CA, or a self-signed server's own) to trust
    #: instead of the system's CAs.
    cafile: str | None = None
    #: Check nothing: anyone on the path can read and change the conversation.
    insecure: bool = False

    def options(self, host: str) -> Any:
        """The TLS connection creator for ``host``."""
        if self.insecure:
            return CertificateOptions()  # verify=False: no chain, no hostname check
        if self.cafile is None:
            return optionsForClientTLS(host)
        try:
            pem = Path(self.cafile).read_bytes()
            roots = [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in load_pem_x509_certificates(pem)]
        except (OSError, ValueError) as e:
            raise ClientError(USAGE, f"--cafile {self.cafile}: {getattr(e, 'strerror', None) or e}") from None
        return optionsForClientTLS(host, trustRoot=trustRootFromCertificates(roots))


async def run_turn(
    reactor: Any, url: str, headers: dict[str, str], request: TurnRequest, listener: FrameListener,
    trust: Trust = Trust(),
) -> TurnReport:
    """Connect, run one turn, close; raises :class:`ClientError` when it cannot."""
    factory = WebSocketClientFactory(url, headers=headers)
    factory.protocol = _Socket
    factory.setProtocolOptions(openHandshakeTimeout=10, closeHandshakeTimeout=2)
    driver = _TurnDriver(reactor, request, listener)
    factory.driver = driver  # type: ignore[attr-defined]
    endpoint: Any = HostnameEndpoint(reactor, factory.host, factory.port, timeout=10)
    if factory.isSecure:
        endpoint = wrapClientTLS(trust.options(factory.host), endpoint)
    try:
        await endpoint.connect(factory)
    except Exception as e:
        raise ClientError(CONNECTION_FAILED, f"cannot connect to {factory.host}:{factory.port}: {e}") from None
    return await driver.done
