"""A carrier's stream socket: Autobahn on one side, a :class:`PhoneCall` on the other.

The socket owns what needs the socket and the server: the token check at
``start`` (1008 without a valid one) and the per-call engines with
``end_call`` offered; decoding JSON, the user's memory, metrics and the
connection tracker that drains calls with every other socket when the
server stops are the foreign socket's (:mod:`livetx.web.foreign`).
"""

from __future__ import annotations

from typing import Any

import orjson
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from livetx.auth.tokens import AuthFailure
from livetx.config import ServerConfig, TelephonyConfig, ToolsConfig
from livetx.domain import Engines, MemoryOpener
from livetx.errors import CloseCode, ErrorCode
from livetx.fences.autobahn import close_with_code
from livetx.live.frames import Frame
from livetx.live.session import LiveSession
from livetx.metrics import ServerMetrics
from livetx.telephony import Carrier, Start
from livetx.telephony.call import PhoneCall, session_frames
from livetx.telephony.tokens import CallTokens
from livetx.tools import Tool
from livetx.web.admission import Admission
from livetx.web.connections import ConnectionTracker
from livetx.web.foreign import ForeignFactory, ForeignProtocol, with_tool

__all__ = ["CallFactory", "CallProtocol", "with_tool"]

_log = Logger()


class CallProtocol(ForeignProtocol):
    """One carrier stream socket: one call."""

    factory: CallFactory
    admission: Admission = Admission(mode="call")
    call: PhoneCall | None = None
    #: The call token in the stream URL's query (carriers that cannot pass parameters in ``start``).
    url_token: str | None = None
    #: Refused carrier frames on this call, by code (for the log line at its end).
    refusals: dict[str, int]

    def onConnect(self, request: ConnectionRequest) -> None:
        self.url_token = (request.params.get("token") or [None])[0]
        self.refusals = {}

    def onOpen(self) -> None:
        if self.draining():
            return
        factory = self.factory
        # A carrier that stops reading holds back the reply's speech, then is dropped, as any client.
        self.start_flow()
        config = factory.telephony
        self.call = PhoneCall(carrier=factory.carrier, host=self, clock=factory.clock, dtmf=config.dtmf,
                              dtmf_wait=config.dtmf_wait_ms / 1000, session_frames=factory.session_frames)
        # A socket that never says which call it is holds nothing for long.
        self.wait_first(self._never_started)

    def _never_started(self) -> None:
        if self.call is not None and self.call.state == "waiting":
            _log.warn("Closed a {carrier} stream that sent no 'start'", carrier=self.factory.carrier.name)
            close_with_code(self, CloseCode.POLICY_VIOLATION, "No start")

    def listening(self) -> bool:
        return self.call is not None

    def receive_binary(self, payload: bytes) -> None:
        assert self.call is not None
        self.call.receive(payload)  # the carrier's to read (Vonage's audio), or to refuse

    def receive_object(self, message: dict[str, Any]) -> None:
        assert self.call is not None
        self.call.receive(message)

    # -- CallHost ------------------------------------------------------------

    def send_frame(self, frame: Frame | bytes) -> None:
        if isinstance(frame, bytes):
            self.write(frame, True)
        else:
            self.write(orjson.dumps(frame), False)

    def too_slow(self) -> None:
        _log.warn("Hanging up a {carrier} call: the carrier reads too slowly", carrier=self.factory.carrier.name)
        close_with_code(self, CloseCode.POLICY_VIOLATION, "Carrier reads too slowly")

    def hang_up(self, code: int, reason: str) -> None:
        self.close_with(code, reason)

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
        memory = self.memory(username)
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
        self.factory.metrics.frame_refused(self.factory.carrier.name, code)
        _log.warn("Refused a {carrier} frame: {message} ({code})",
                  carrier=self.factory.carrier.name, message=message, code=code.value)

    def session_error(self, frame: Frame) -> None:
        # Counted already: the session reports each error frame it sends to its listener.
        _log.warn("Call of {user}: {message} ({code})", user=self.admission.username,
                  message=frame.get("data"), code=frame.get("code"))

    @property
    def session(self) -> LiveSession | None:
        return None if self.call is None else self.call.session

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.stop_waiting()
        call, self.call = self.call, None
        if call is None:
            return
        self.release_after(call.hung_up())

    def ended(self) -> None:
        if self.refusals:
            _log.info("Call of {user} refused frames: {counts}", user=self.admission.username,
                      counts=dict(self.refusals))


class CallFactory(ForeignFactory):
    """The stream endpoint of one carrier."""

    protocol = CallProtocol  # type: ignore[assignment]  # Twisted's annotation wants a generic callable

    def __init__(
        self, *, carrier: Carrier, tokens: CallTokens, engines: Engines, limits: ServerConfig,
        telephony: TelephonyConfig, tools: ToolsConfig, connections: ConnectionTracker, clock: IReactorTime,
        metrics: ServerMetrics, endpoint: str, memories: MemoryOpener | None = None,
        session_frames: tuple[Frame, ...] = session_frames({}),
    ) -> None:
        super().__init__(engines=engines, limits=limits, tools=tools, connections=connections, clock=clock,
                         metrics=metrics, endpoint=endpoint, memories=memories)
        self.carrier = carrier
        self.tokens = tokens
        self.telephony = telephony
        self.session_frames = session_frames
