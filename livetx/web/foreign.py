"""A socket that drives a :class:`LiveSession` from someone else's WebSocket protocol.

A carrier's media stream (:mod:`livetx.telephony`) and a xiaozhi board
(:mod:`livetx.devices`) each speak their own frames, but what the server
asks of their sockets is the same as of the Live API's: the rate limit
and flow control every client gets, a first message within the handshake
timeout, the user's memory and metrics, and what the connection tracker
needs to drain them with every other socket when the server stops. That
part lives here once; each package adds its own frames and checks.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime
from twisted.logger import Logger

from livetx import __version__
from livetx.config import ServerConfig, ToolsConfig
from livetx.domain import Engines, MemoryOpener, OpenedMemory
from livetx.errors import CloseCode, ErrorCode
from livetx.fences.autobahn import QuietIO, close_with_code, settings_from_factory
from livetx.fences.twisted_web import take_over_producer
from livetx.live.session import LiveSession
from livetx.metrics import ServerMetrics, TurnObserver
from livetx.providers.base import ToolCallingModel
from livetx.tools import Tool
from livetx.web.admission import Admission, FrameRate, Verdict
from livetx.web.connections import ConnectionTracker
from livetx.web.flow import SendBuffer
from livetx.web.sockets import apply_limits

_log = Logger()


class ForeignFactory(WebSocketServerFactory):
    """What every foreign endpoint holds: the engines, limits, tracker, clock, metrics and memories."""

    def __init__(
        self, *, engines: Engines, limits: ServerConfig, tools: ToolsConfig, connections: ConnectionTracker,
        clock: IReactorTime, metrics: ServerMetrics, endpoint: str, memories: MemoryOpener | None = None,
    ) -> None:
        super().__init__(server=f"livetx/{__version__}")
        self.engines = engines
        self.limits = limits
        self.tools = tools
        self.connections = connections
        self.clock = clock
        self.metrics = metrics
        self.endpoint = endpoint
        self.memories = memories
        apply_limits(self, limits)


@settings_from_factory
class ForeignProtocol(QuietIO):
    """One foreign socket; a subclass says how its frames reach its conversation."""

    factory: ForeignFactory
    admission: Admission
    observer: TurnObserver | None = None
    rate: FrameRate | None = None
    buffer: SendBuffer | None = None
    finished: Deferred[None] | None = None
    _first_wait: IDelayedCall | None = None

    # -- what a subclass says -----------------------------------------------------

    @property
    def session(self) -> LiveSession | None:
        """The conversation's session, once its first message opened one."""
        raise NotImplementedError

    def listening(self) -> bool:
        """Whether a conversation takes messages (from open to close)."""
        raise NotImplementedError

    def receive_binary(self, payload: bytes) -> None:
        raise NotImplementedError

    def receive_object(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def refused(self, code: ErrorCode, message: str) -> None:
        raise NotImplementedError

    def too_slow(self) -> None:
        """The peer stopped reading while the reply's speech waits: log it and close."""
        raise NotImplementedError

    def ended(self) -> None:
        """Called once the session let go, before ``finished`` fires (a log line of the connection's end)."""

    # -- open, read, write -----------------------------------------------------------

    def draining(self) -> bool:
        """True (and closed with 1001) when the server is stopping: nothing new opens."""
        if self.factory.connections.draining:
            close_with_code(self, CloseCode.GOING_AWAY, "Server shutting down")
            return True
        return False

    def start_flow(self) -> None:
        """The rate limit and the send buffer every client gets: a peer that stops reading is dropped."""
        factory = self.factory
        self.finished = Deferred()
        self.rate = FrameRate(factory.limits.max_frames_per_second, factory.clock)
        self.buffer = SendBuffer(factory.limits.max_send_buffer_bytes, pause=self._output_paused,
                                 resume=self._output_resumed)
        take_over_producer(cast(IConsumer, self.transport), self.buffer)

    def wait_first(self, nothing_said: Any) -> None:
        """A socket that never says who it is holds nothing for long: ``nothing_said`` after the handshake timeout."""
        self._first_wait = self.factory.clock.callLater(self.factory.limits.handshake_timeout or 10.0, nothing_said)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not self.listening():
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
            self.receive_binary(payload)
            return
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.refused(ErrorCode.INVALID_JSON, "message is not valid JSON")
            return
        if not isinstance(message, dict):
            self.refused(ErrorCode.INVALID_MESSAGE_FORMAT, "message is not a JSON object")
            return
        self.receive_object(message)

    def write(self, payload: bytes, binary: bool) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload, isBinary=binary)
            if self.buffer is not None and self.buffer.sent(len(payload)):
                self.too_slow()

    def _output_paused(self) -> None:
        if self.session is not None:
            self.session.pause_output()

    def _output_resumed(self) -> None:
        if self.session is not None:
            self.session.resume_output()

    def memory(self, username: str) -> OpenedMemory | None:
        """The user's stored conversation, when the server keeps them."""
        if self.factory.memories is None:
            return None
        memory = self.factory.memories(username, None)
        memory.opened.addErrback(lambda f: _log.failure("Could not open the stored conversation", f))
        return memory

    # -- what the connection tracker asks of a socket --------------------------

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
        if self.state == self.STATE_OPEN:
            close_with_code(self, code, reason)

    def revoke(self, reason: str) -> None:
        """Opened with a call or device token, never an API key; a revocation ends one all the same."""
        self.close_with(CloseCode.POLICY_VIOLATION, reason)

    # -- close ------------------------------------------------------------------------

    def stop_waiting(self) -> None:
        if self._first_wait is not None and self._first_wait.active():
            self._first_wait.cancel()

    def release_after(self, over: Deferred[Any]) -> None:
        """Once ``over`` fires: out of the tracker, the metrics told, ``finished`` fired."""
        def released(_: object) -> None:
            self.factory.connections.discard(self)
            if self.observer is not None:
                self.observer.closed()
            self.ended()
            self.finish()

        over.addBoth(released)

    def finish(self) -> None:
        if self.finished is not None and not self.finished.called:
            self.finished.callback(None)


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
