"""A device's WebSocket: Autobahn on one side, a :class:`DeviceConversation` on the other.

The socket owns what needs the server: the four headers the firmware sends
(``Authorization: Bearer``, ``Protocol-Version``, ``Device-Id``,
``Client-Id``) checked against the token and the registry (an unknown,
pending or revoked board is closed with 1008 and a log line), the board's
own user and its tools over MCP; the rate limit, flow control, memory,
metrics and the connection tracker that drains it with every other socket
when the server stops are the foreign socket's (:mod:`livetx.web.foreign`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import orjson
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from livetx.auth.tokens import AuthFailure
from livetx.config import ServerConfig, ToolsConfig
from livetx.devices import framing
from livetx.devices.device import DeviceConversation, DeviceError
from livetx.devices.mcp import DeviceMcp
from livetx.devices.registry import DeviceRegistry, Judge, refusal
from livetx.devices.tokens import DeviceTokens
from livetx.domain import Engines, MemoryOpener
from livetx.errors import CloseCode, ErrorCode
from livetx.fences.autobahn import close_with_code
from livetx.live.frames import Frame
from livetx.live.session import LiveSession
from livetx.metrics import ServerMetrics
from livetx.tools import Tool
from livetx.web.admission import Admission
from livetx.web.connections import ConnectionTracker
from livetx.web.foreign import ForeignFactory, ForeignProtocol, with_tool

_log = Logger()


class DeviceProtocol(ForeignProtocol):
    """One board's socket."""

    factory: DeviceFactory
    admission: Admission = Admission(mode="device")
    device: DeviceConversation | None = None
    #: Why the handshake's headers are refused (closed at open with ``_refusal_code``).
    _refusal: str | None = None
    _refusal_code = CloseCode.POLICY_VIOLATION
    _device_id = ""
    #: The Client-Id the board's token was issued to.
    client_id = ""
    _version = 1
    #: The board's MCP client, when its hello says ``features.mcp`` and the model can call tools.
    device_tools: DeviceMcp | None = None
    _engines: Engines | None = None

    def onConnect(self, request: ConnectionRequest) -> None:
        headers = request.headers
        factory = self.factory
        self._device_id = headers.get("device-id", "")
        raw = headers.get("protocol-version", "1")
        if not raw.isdigit() or int(raw) not in framing.VERSIONS:
            self._refusal, self._refusal_code = f"Protocol-Version {raw!r} is not 1, 2 or 3", CloseCode.PROTOCOL_ERROR
            return
        self._version = int(raw)
        try:
            device_id = factory.tokens.verify(headers.get("authorization"), self._device_id, headers.get("client-id"))
        except AuthFailure as e:
            self._refusal = e.reason
            return
        known = factory.registry.get(device_id)
        self._refusal = refusal(known)
        if known is None or self._refusal is not None:
            return
        self._device_id, self.client_id = device_id, known.client_id
        self.admission = Admission(username=known.username, mode="device")

    def onOpen(self) -> None:
        if self.draining():
            return
        factory = self.factory
        if self._refusal is not None:
            _log.warn("Refused device {device}: {reason}", device=self._device_id or "(no Device-Id)",
                      reason=self._refusal)
            factory.metrics.refused_at(factory.endpoint)
            close_with_code(self, self._refusal_code, self._refusal)
            return
        factory.open.add(self)
        # A board that stops reading holds back the reply's speech, then is dropped, as any client.
        self.start_flow()
        self.device = DeviceConversation(host=self, clock=factory.clock, version=self._version,
                                         output_rate=factory.output_rate, turn=factory.turn,
                                         wake_words=factory.wake_words)
        # The firmware gives up after 10 s without the server's hello; a device that says nothing holds nothing.
        self.wait_first(self._silent)

    def _silent(self) -> None:
        if self.device is not None and self.device.state == "waiting":
            _log.warn("Closed device {device}: no 'hello'", device=self._device_id)
            close_with_code(self, CloseCode.POLICY_VIOLATION, "No hello")

    def listening(self) -> bool:
        return self.device is not None

    def receive_binary(self, payload: bytes) -> None:
        assert self.device is not None
        self._refusing(self.device.receive_binary, payload)

    def receive_object(self, message: dict[str, Any]) -> None:
        assert self.device is not None
        self._refusing(self.device.receive_text, message)

    def _refusing(self, receive: Callable[[Any], None], message: Any) -> None:
        """A message the board should not have sent is refused, and closes the socket when it cannot go on."""
        try:
            receive(message)
        except DeviceError as e:
            self.refused(e.code, e.message)
            if e.close is not None:
                close_with_code(self, e.close, e.message)

    # -- DeviceHost -------------------------------------------------------------

    def send_json(self, message: Frame) -> None:
        self.write(orjson.dumps(message), False)

    def send_binary(self, data: bytes) -> None:
        self.write(data, True)

    def too_slow(self) -> None:
        _log.warn("Closing device {device}: it reads too slowly", device=self._device_id)
        close_with_code(self, CloseCode.POLICY_VIOLATION, "Device reads too slowly")

    def open_session(self, emit: Any) -> LiveSession:
        factory = self.factory
        username = self.admission.username
        assert username is not None
        memory = self.memory(username)
        self.observer = factory.metrics.opened(factory.endpoint, "device", username)
        factory.connections.add(self)
        _log.info("Device {device} connected as {user} (protocol version {version})",
                  device=self._device_id, user=username, version=self._version)
        engines = factory.engines.for_owner(username)
        assert self.device is not None
        if self.device.features.get("mcp") is True:
            tooling = with_tool(engines, [], factory.tools, factory.clock)
            if tooling is not engines:  # the model can call tools: ask the board for its own
                engines = self._engines = tooling
                self.device_tools = DeviceMcp(self._send_mcp, self._offer)
                self.device_tools.start()
        return LiveSession(username=username, engines=engines, clock=factory.clock,
                           emit=emit, memory=memory, listener=self.observer)

    def _send_mcp(self, payload: Frame) -> None:
        assert self.device is not None
        self.send_json({"session_id": self.device.session_id, "type": "mcp", "payload": payload})

    def _offer(self, tools: list[Tool]) -> None:
        """The board's tools join the model's (the session's engines hold this socket's own tool loop)."""
        from livetx.tools.registry import ToolRegistry

        llm: Any = self._engines.llm if self._engines is not None else None
        if llm is None or not tools:
            return
        known = [t for t in (llm.registry.get(n) for n in llm.registry.names) if t is not None]
        llm.registry = ToolRegistry([*known, *tools])
        _log.info("Device {device} offers tools: {names}", device=self._device_id, names=", ".join(t.name for t in tools))

    def refused(self, code: ErrorCode, message: str) -> None:
        self.factory.metrics.frame_refused("device", code)
        _log.warn("Refused a message from device {device}: {message} ({code})",
                  device=self._device_id, message=message, code=code.value)

    def session_error(self, frame: Frame) -> None:
        # Counted already: the session reports each error frame it sends to its listener.
        _log.warn("Device {device}: {message} ({code})", device=self._device_id,
                  message=frame.get("data"), code=frame.get("code"))

    def mcp(self, payload: Frame) -> None:
        if self.device_tools is not None:
            self.device_tools.receive(payload)

    @property
    def device_id(self) -> str:
        """The board's Device-Id, once its token and the registry admitted it."""
        return self._device_id if self.admission.username is not None else ""

    @property
    def session(self) -> LiveSession | None:
        return None if self.device is None else self.device.session

    def revoke(self, reason: str) -> None:
        """The board is no longer approved (revoked, or reflashed and pending): closed with 1008 and a log line."""
        if self.state == self.STATE_OPEN:
            _log.warn("Closed device {device}: {reason}", device=self._device_id, reason=reason)
        super().revoke(reason)

    def reboot(self) -> None:
        """The operator asked for it (``livetx devices reboot``): the firmware restarts on ``system`` ``reboot``."""
        device = self.device
        if device is not None and device.state == "ready":
            _log.info("Rebooting device {device}", device=self._device_id)
            self.send_json({"session_id": device.session_id, "type": "system", "command": "reboot"})

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.open.discard(self)
        self.stop_waiting()
        device, self.device = self.device, None
        if device is None:
            return
        device.closed()
        if self.device_tools is not None:
            self.device_tools.closed()
        session = device.session
        if session is None:
            self.finish()
            return
        session.stop_listening()
        session.stop()
        self.release_after(session.turn_over().addCallback(lambda _: session.close()))


class DeviceFactory(ForeignFactory):
    """The devices' WebSocket endpoint."""

    protocol = DeviceProtocol  # type: ignore[assignment]  # Twisted's annotation wants a generic callable

    def __init__(
        self, *, tokens: DeviceTokens, registry: DeviceRegistry, engines: Engines, limits: ServerConfig,
        connections: ConnectionTracker, clock: IReactorTime, metrics: ServerMetrics, endpoint: str,
        output_rate: int, turn: dict[str, Any], tools: ToolsConfig, memories: MemoryOpener | None = None,
        wake_words: Iterable[str] = (),
    ) -> None:
        super().__init__(engines=engines, limits=limits, tools=tools, connections=connections, clock=clock,
                         metrics=metrics, endpoint=endpoint, memories=memories)
        self.tokens = tokens
        self.registry = registry
        self.output_rate = output_rate
        self.turn = turn
        self.wake_words = tuple(wake_words)
        #: The boards' sockets past the handshake, for revocations and reboots.
        self.open: set[DeviceProtocol] = set()

    def close_devices(self, judge: Judge) -> None:
        """Close the sockets of the boards ``judge`` refuses now, with its reason (from :class:`DeviceWatch`)."""
        for protocol, why in [(p, judge(p.device_id, p.client_id)) for p in self.open]:
            if why is not None:
                protocol.revoke(why)

    def reboot_devices(self, device_ids: frozenset[str]) -> None:
        for protocol in [p for p in self.open if p.device_id in device_ids]:
            protocol.reboot()
