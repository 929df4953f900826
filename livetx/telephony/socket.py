"""A carrier's stream socket: Autobahn on one side, a :class:`PhoneCall` on the other.

The socket owns what needs the socket and the server: decoding JSON, the
token check at ``start`` (1008 without a valid one), the user's memory,
metrics, the per-call engines with ``end_call`` offered, and the
connection tracker that drains calls with every other socket when the
server stops.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime
from twisted.logger import Logger

from livetx import __version__
from livetx.auth.tokens import AuthFailure
from livetx.config import ServerConfig, TelephonyConfig, ToolsConfig
from livetx.domain import Engines, MemoryOpener
from livetx.errors import CloseCode, ErrorCode
from livetx.fences.autobahn import QuietIO, close_with_code, settings_from_factory
from livetx.fences.twisted_web import take_over_producer
from livetx.live.frames import Frame
from livetx.live.session import LiveSession
from livetx.metrics import ServerMetrics, TurnObserver
from livetx.telephony import Carrier, Start
from livetx.telephony.call import PhoneCall, session_frames
from livetx.telephony.tokens import CallTokens
from livetx.providers.base import ToolCallingModel
from livetx.tools import Tool
from livetx.web.admission import Admission, FrameRate, Verdict
from livetx.web.connections import ConnectionTracker
from livetx.web.flow import SendBuffer
from livetx.web.sockets import apply_limits

_log = Logger()

#: Close code for a frame we cannot take at all (RFC 6455 "unsupported data").
UNSUPPORTED_DATA = 1003


@settings_from_factory
class CallProtocol(QuietIO):
    """One carrier stream socket: one call."""

    factory: CallFactory
    admission: Admission = Admission(mode="call")
    call: PhoneCall | None = None
    observer: TurnObserver | None = None
    rate: FrameRate | None = None
    buffer: SendBuffer | None = None
    finished: Deferred[None] | None = None
    #: The call token in the stream URL's query (carriers that cannot pass parameters in ``start``).
    url_token: str | None = None
    #: Refused carrier frames on this call, by code (for the log line at its end).
    refusals: dict[str, int]
    _no_start: IDelayedCall | None = None

    def onConnect(self, request: ConnectionRequest) -> None:
        self.url_token = (request.params.get("token") or [None])[0]
        self.refusals = {}

    def onOpen(self) -> None:
        factory = self.factory
        if factory.connections.draining:
            close_with_code(self, CloseCode.GOING_AWAY, "Server shutting down")
            return
        self.finished = Deferred()
        self.rate = FrameRate(factory.limits.max_frames_per_second, factory.clock)
        # A carrier that stops reading holds back the reply's speech, then is dropped, as any client.
        self.buffer = SendBuffer(factory.limits.max_send_buffer_bytes, pause=self._output_paused,
                                 resume=self._output_resumed)
        take_over_producer(cast(IConsumer, self.transport), self.buffer)
        config = factory.telephony
        self.call = PhoneCall(carrier=factory.carrier, host=self, clock=factory.clock, dtmf=config.dtmf,
                              dtmf_wait=config.dtmf_wait_ms / 1000, session_frames=factory.session_frames)
        # A socket that never says which call it is holds nothing for long.
        wait = factory.limits.handshake_timeout or 10.0
        self._no_start = factory.clock.callLater(wait, self._never_started)

    def _never_started(self) -> None:
        if self.call is not None and self.call.state == "waiting":
            _log.warn("Closed a {carrier} stream that sent no 'start'", carrier=self.factory.carrier.name)
            close_with_code(self, CloseCode.POLICY_VIOLATION, "No start")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        call = self.call
        if call is None:
            return
        assert self.rate is not None
        verdict = self.rate.admit()
        if verdict is Verdict.CLOSE:
            close_with_code(self, CloseCode.POLICY_VIOLATION, "Too many messages")
            return
        if verdict is not Verdict.ACCEPT:
            self.refused(ErrorCode.RATE_LIMITED, "too many messages")
            return
        if isBinary:
            self.refused(ErrorCode.UNSUPPORTED_FRAME, "binary message")
            return
        try:
            frame = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.refused(ErrorCode.INVALID_JSON, "message is not valid JSON")
            return
        if not isinstance(frame, dict):
            self.refused(ErrorCode.INVALID_MESSAGE_FORMAT, "message is not a JSON object")
            return
        call.receive(frame)

    # -- CallHost ------------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        if self.state == self.STATE_OPEN:
            payload = orjson.dumps(frame)
            self.sendMessage(payload, isBinary=False)
            if self.buffer is not None and self.buffer.sent(len(payload)):
                _log.warn("Hanging up a {carrier} call: the carrier reads too slowly", carrier=self.factory.carrier.name)
                close_with_code(self, CloseCode.POLICY_VIOLATION, "Carrier reads too slowly")

    def _output_paused(self) -> None:
        if self.session is not None:
            self.session.pause_output()

    def _output_resumed(self) -> None:
        if self.session is not None:
            self.session.resume_output()

    def hang_up(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            close_with_code(self, code, reason)

    def open_session(self, start: Start, end_call: Tool) -> LiveSession | None:
        factory = self.factory
        token = self.url_token or start.parameters.get("token")
        try:
            username = factory.tokens.verify(token, start.call_id)
        except AuthFailure as e:
            _log.warn("Refused a {carrier} stream for call {call}: {reason}",
                      carrier=factory.carrier.name, call=start.call_id, reason=e.reason)
            factory.metrics.refused_at(factory.endpoint)
            close_with_code(self, CloseCode.POLICY_VIOLATION, e.reason)
            return None
        self.admission = Admission(username=username, mode="call")
        memory = None
        if factory.memories is not None:
            memory = factory.memories(username, None)
            memory.opened.addErrback(lambda f: _log.failure("Could not open the stored conversation", f))
        self.observer = factory.metrics.opened(factory.endpoint, "call", username)
        engines = with_tool(factory.engines.for_owner(username), end_call, factory.tools, factory.clock)
        assert self.call is not None
        session = LiveSession(username=username, engines=engines, clock=factory.clock, emit=self.call.from_session,
                              memory=memory, listener=self.observer)
        factory.connections.add(self)
        _log.info("Call {call} ({carrier}) from {user} connected",
                  call=start.call_id, carrier=factory.carrier.name, user=username)
        return session

    def refused(self, code: ErrorCode, message: str) -> None:
        self.refusals[code] = self.refusals.get(code, 0) + 1
        self.factory.metrics.errors.labels(code).inc()
        _log.warn("Refused a {carrier} frame: {message} ({code})",
                  carrier=self.factory.carrier.name, message=message, code=code.value)

    def session_error(self, frame: Frame) -> None:
        # Counted already: the session reports each error frame it sends to its listener.
        _log.warn("Call of {user}: {message} ({code})", user=self.admission.username,
                  message=frame.get("data"), code=frame.get("code"))

    # -- what the connection tracker asks of a socket --------------------------

    @property
    def session(self) -> LiveSession | None:
        return None if self.call is None else self.call.session

    @property
    def busy(self) -> bool:
        return self.session is not None and self.session.busy

    def turns_over(self) -> Deferred[None]:
        return succeed(None) if self.session is None else self.session.turn_over()

    def stop_turn(self) -> None:
        if self.session is not None:
            self.session.stop()

    def stop_listening(self) -> None:
        if self.session is not None:
            self.session.stop_listening()

    def close_with(self, code: int, reason: str) -> None:
        self.hang_up(code, reason)

    def revoke(self, reason: str) -> None:
        """Calls are opened with call tokens, never API keys; a revocation ends one all the same."""
        self.hang_up(CloseCode.POLICY_VIOLATION, reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._no_start is not None and self._no_start.active():
            self._no_start.cancel()
        call, self.call = self.call, None
        if call is None:
            return
        over = call.hung_up()

        def released(_: object) -> None:
            self.factory.connections.discard(self)
            if self.observer is not None:
                self.observer.closed()
            if self.refusals:
                _log.info("Call of {user} refused frames: {counts}", user=self.admission.username,
                          counts=dict(self.refusals))
            if self.finished is not None and not self.finished.called:
                self.finished.callback(None)

        over.addBoth(released)


class CallFactory(WebSocketServerFactory):
    """The stream endpoint of one carrier."""

    protocol = CallProtocol  # type: ignore[assignment]  # Twisted's annotation wants a generic callable

    def __init__(
        self, *, carrier: Carrier, tokens: CallTokens, engines: Engines, limits: ServerConfig,
        telephony: TelephonyConfig, tools: ToolsConfig, connections: ConnectionTracker, clock: IReactorTime,
        metrics: ServerMetrics, endpoint: str, memories: MemoryOpener | None = None,
        session_frames: tuple[Frame, ...] = session_frames({}),
    ) -> None:
        super().__init__(server=f"livetx/{__version__}")
        self.carrier = carrier
        self.tokens = tokens
        self.engines = engines
        self.limits = limits
        self.telephony = telephony
        self.tools = tools
        self.connections = connections
        self.clock = clock
        self.metrics = metrics
        self.endpoint = endpoint
        self.memories = memories
        self.session_frames = session_frames
        apply_limits(self, limits)


def with_tool(engines: Engines, tool: Tool | list[Tool], config: ToolsConfig, clock: IReactorTime) -> Engines:
    """The engines with ``tool`` (or several) offered to the model besides the configured tools.

    The call's registry holds the tools offered when the call starts (an MCP
    server's included; one that restarts mid-call offers its new set to the
    next call). A model that cannot call tools (the echo model) is left as it
    is: the call then ends only when the caller hangs up.
    """
    from livetx.tools.loop import ToolingModel
    from livetx.tools.registry import ToolRegistry

    added = tool if isinstance(tool, list) else [tool]
    llm: Any = engines.llm
    if isinstance(llm, ToolingModel):
        tools = [t for t in (llm.registry.get(name) for name in llm.registry.names) if t is not None]
        return replace(engines, llm=ToolingModel(llm.llm, ToolRegistry([*tools, *added]), llm.config, clock))
    if isinstance(llm, ToolCallingModel):
        return replace(engines, llm=ToolingModel(llm, ToolRegistry(added), config, clock))
    return engines

