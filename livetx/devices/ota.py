"""The OTA endpoint a xiaozhi board asks at boot: where its WebSocket is, with a token; or an activation code.

The firmware (``main/ota.cc``) POSTs its system information as JSON, or
GETs, with ``Device-Id`` and ``Client-Id`` headers, and reads from the
answer: ``server_time``, ``firmware`` (``version``; an empty ``url`` means
no update), ``websocket`` (``url`` and ``token``, kept in its NVS), and
``activation`` (``code``, ``message``, ``challenge``, ``timeout_ms``).
With an activation it shows and speaks the code, then POSTs to
``<ota url>/activate`` until it gets 200 (202 means "not yet", retried
every few seconds), then asks again and gets its WebSocket.

Here: an approved board gets the WebSocket URL and a token bound to its
Device-Id and Client-Id; any other board is recorded pending
(:class:`livetx.devices.registry.DeviceRegistry`) and gets its code, which
the operator approves with ``livetx devices approve CODE``. A revoked
board gets 403. The firmware's HMAC over the challenge is not checked: no
key of the board's is known here, so approval is the operator's, by code.
"""

from __future__ import annotations

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
                 public_url: str | None, socket_path: str) -> None:
        super().__init__()
        self._registry = registry
        self._tokens = tokens
        self._clock = clock
        self._public_url = public_url.rstrip("/") if public_url else None
        self._socket_path = socket_path
        self.putChild(b"", self)
        self.putChild(b"activate", _Activate(registry))

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
            answer["websocket"] = {"url": url, "token": self._tokens.issue(device_id, known.client_id)}
        else:
            _log.info("Device {device} ({board}) waits for approval: livetx devices approve {code}",
                      device=device_id, board=board or "unknown board", code=known.code)
            answer["activation"] = {"code": known.code, "message": f"livetx\n{known.code}",
                                    "challenge": known.challenge, "timeout_ms": ACTIVATION_TIMEOUT_MS}
        return _json(request, 200, answer)


class _Activate(Resource):
    """200 once the operator approved the board, 202 while it waits, 403 when revoked or unknown."""

    isLeaf = True

    def __init__(self, registry: DeviceRegistry) -> None:
        super().__init__()
        self._registry = registry

    def body_limit(self, request: Request) -> int:
        return MAX_BODY_BYTES

    def check_headers(self, request: Request) -> None:
        """The firmware sends ``{}`` or its HMAC payload, which is not checked (see the module)."""

    def render_POST(self, request: Request) -> bytes:
        device_id, client_id = _ids(request)
        known = self._registry.get(device_id) if device_id else None
        if known is None or known.state == "revoked" or known.client_id != client_id:
            return _json(request, 403, {"error": "unknown or revoked device"})
        if known.state == "pending":
            return _json(request, 202, {"message": "waiting for approval"})
        return _json(request, 200, {"message": "activated"})
