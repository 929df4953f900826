"""The OTA endpoint a xiaozhi board asks at boot: where its WebSocket is, with a token; or an activation code.

The firmware (``main/ota.cc``) POSTs its system information as JSON, or
GETs, with ``Device-Id`` and ``Client-Id`` headers, and reads from the
answer: ``server_time``, ``firmware`` (``version``; an empty ``url`` means
no update), ``websocket`` (``url``, ``token`` and ``version``, the binary
framing it announces as ``Protocol-Version``: every key is kept in its NVS,
so one left there by another server stays unless this answer sets it), and
``activation`` (``code``, ``message``, ``challenge``, ``timeout_ms``).
With an activation it shows and speaks the code, then POSTs to
``<ota url>/activate`` until it gets 200 (202 means "not yet", retried
every few seconds), then asks again and gets its WebSocket.

Here: an approved board gets the WebSocket URL and a token bound to its
Device-Id and Client-Id; any other board is recorded pending
(:class:`livetx.devices.registry.DeviceRegistry`) and gets its code, which
the operator approves with ``livetx devices approve CODE``, unless its
activation proves it with the HMAC key of its serial number (see
:class:`_Activate`). A revoked board gets 403.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from livetx.devices.registry import Device, DeviceRegistry
from livetx.devices.tokens import DeviceTokens
from livetx.telephony.webhook import public_base
from livetx.web.replies import finish_async

_log = Logger()

#: The firmware's system report is a few kilobytes (its partition table); far larger is not a board.
MAX_BODY_BYTES = 64 * 1024
#: How long the board shows its code before asking again (ms, the firmware's ``timeout_ms``).
ACTIVATION_TIMEOUT_MS = 30000


def _json(request: Request, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return orjson.dumps(body)


def _ids(request: Request) -> tuple[str, str]:
    return ((request.getHeader("device-id") or "").strip().lower(), (request.getHeader("client-id") or "").strip())


class DeviceOta(Resource):
    """``/xiaozhi/ota/``: the board's version check; ``/xiaozhi/ota/activate``: its activation poll."""

    def __init__(self, *, registry: DeviceRegistry, tokens: DeviceTokens, clock: IReactorTime,
                 public_url: str | None, socket_path: str, keys: dict[str, bytes] | None = None,
                 protocol_version: int = 1) -> None:
        super().__init__()
        self._protocol_version = protocol_version
        self._registry = registry
        self._tokens = tokens
        self._clock = clock
        self._public_url = public_url.rstrip("/") if public_url else None
        self._socket_path = socket_path
        self.putChild(b"", self)
        self.putChild(b"activate", _Activate(registry, keys or {}))

    def body_limit(self, request: Request) -> int:
        return MAX_BODY_BYTES

    def check_headers(self, request: Request) -> None:
        """Every board may ask; who it is is read from the headers with the body."""

    def render_GET(self, request: Request) -> Any:
        return self.render_POST(request)

    def render_POST(self, request: Request) -> Any:
        device_id, client_id = _ids(request)
        if not device_id or not client_id:
            return _json(request, 400, {"error": "Device-Id and Client-Id headers are required"})
        report: Any = {}
        if request.content is not None:
            body = request.content.read(MAX_BODY_BYTES + 1)
            if len(body) > MAX_BODY_BYTES:
                return _json(request, 413, {"error": "the report is too large"})
            try:
                report = orjson.loads(body) if body.strip() else {}
            except orjson.JSONDecodeError:
                return _json(request, 400, {"error": "the body is not JSON"})
        application = report.get("application") if isinstance(report, dict) else None
        version = application.get("version", "") if isinstance(application, dict) else ""
        board = (request.getHeader("user-agent") or "")[:100]
        answered = self._registry.asking(device_id, client_id, board)
        return finish_async(request, answered.addCallback(self._answer, request, device_id, str(version), board))

    def _answer(self, known: Device | None, request: Request, device_id: str, version: str, board: str) -> bytes:
        if known is None or known.state == "revoked":
            _log.warn("OTA refused device {device}: {why}", device=device_id,
                      why="revoked" if known is not None else "too many boards waiting for approval")
            return _json(request, 403, {"error": "this device is not allowed on this server"})
        answer: dict[str, Any] = {
            "server_time": {"timestamp": int(self._clock.seconds() * 1000), "timezone_offset": 0},
            "firmware": {"version": version, "url": ""},
        }
        if known.state == "approved":
            base = public_base(request, self._public_url)
            url = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + self._socket_path
            answer["websocket"] = {"url": url, "token": self._tokens.issue(device_id, known.client_id),
                                   "version": self._protocol_version}  # a number: the firmware stores it as one
        else:
            _log.info("Device {device} ({board}) waits for approval: livetx devices approve {code}",
                      device=device_id, board=board or "unknown board", code=known.code)
            answer["activation"] = {"code": known.code, "message": f"livetx\n{known.code}",
                                    "challenge": known.challenge, "timeout_ms": ACTIVATION_TIMEOUT_MS}
        return _json(request, 200, answer)


class _Activate(Resource):
    """200 once the board is approved, 202 while it waits, 403 when revoked, unknown, or its HMAC is wrong.

    The firmware POSTs ``{}`` when it has no serial number in eFuse, else
    ``{"algorithm": "hmac-sha256", "serial_number", "challenge", "hmac"}``:
    the challenge signed with the HMAC key in the board's eFuse. A board
    whose serial number has a key in ``[devices.hmac_keys]`` (the operator
    burned it, or the maker gave it) and whose HMAC of its challenge is
    right is approved at once, with no code to type; a wrong HMAC is
    refused. Any other board waits for the operator's approval by code.
    """

    isLeaf = True

    def __init__(self, registry: DeviceRegistry, keys: dict[str, bytes]) -> None:
        super().__init__()
        self._registry = registry
        self._keys = keys

    def body_limit(self, request: Request) -> int:
        return MAX_BODY_BYTES

    def check_headers(self, request: Request) -> None:
        """Every board may ask; the body is its proof, if it has one."""

    def render_POST(self, request: Request) -> Any:
        device_id, client_id = _ids(request)
        known = self._registry.get(device_id) if device_id else None
        if known is None or known.state == "revoked" or known.client_id != client_id:
            return _json(request, 403, {"error": "unknown or revoked device"})
        if known.state == "approved":
            return _json(request, 200, {"message": "activated"})
        proof = _proof(request)
        key = self._keys.get(str(proof.get("serial_number", "")))
        if key is None:
            return _json(request, 202, {"message": "waiting for approval"})
        if not signed(key, known.challenge, proof):
            _log.warn("Device {device} failed activation: its HMAC of the challenge is wrong for serial {serial}",
                      device=device_id, serial=proof["serial_number"])
            return _json(request, 403, {"error": "the HMAC does not match"})
        _log.info("Device {device} activated by the HMAC of serial {serial}", device=device_id,
                  serial=proof["serial_number"])
        activated = self._registry.approving(device_id)
        return finish_async(request, activated.addCallback(lambda _: _json(request, 200, {"message": "activated"})))


def _proof(request: Request) -> dict[str, Any]:
    """The activation body as a dict (``{}`` for none, or one that is not JSON)."""
    try:
        body = orjson.loads(request.content.read(MAX_BODY_BYTES) if request.content is not None else b"{}")
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def signed(key: bytes, challenge: str, proof: dict[str, Any]) -> bool:
    """The firmware's proof: HMAC-SHA256 of the challenge this server gave it, with its eFuse key, in hex."""
    if proof.get("algorithm") != "hmac-sha256" or not challenge or proof.get("challenge") != challenge:
        return False
    expected = hmac.new(key, challenge.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, str(proof.get("hmac", "")).lower())
