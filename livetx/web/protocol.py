"""The thin Autobahn layer: decode a message, hand it to the session, encode replies.

No protocol rule lives here; that is :mod:`livetx.live.session`. This module
only owns what needs the socket: the handshake outcome, the 1008 refusals,
and routing frames by mode on the unified endpoint.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.types import ConnectionRequest
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx import __version__
from livetx.config import ServerConfig
from livetx.live import frames
from livetx.live.frames import Frame, FrameError
from livetx.live.session import LiveSession, Pipeline
from livetx.store import ConversationStore
from livetx.store.conversation import StoredConversation, default_live_session
from livetx.chat.channel import ChatChannel
from livetx.chat.service import ChatService
from livetx.web.admission import Admission, Gate

_log = Logger()

POLICY_VIOLATION = 1008
GOING_AWAY = 1001


class LiveServerProtocol(WebSocketServerProtocol):
    """One client socket of any of the three Live API endpoints."""

    factory: LiveServerFactory
    admission: Admission = Admission(refusal="Handshake not completed")
    session: LiveSession | None = None
    chat: ChatChannel | None = None

    def onConnect(self, request: ConnectionRequest) -> None:
        self.admission = self.factory.gate(request)

    def onOpen(self) -> None:
        admission = self.admission
        if admission.refusal is not None or admission.username is None:
            if admission.notice is not None:
                self.send(admission.notice)
            self.close_with(POLICY_VIOLATION, admission.refusal or "Unauthorized")
            _log.info("Refused a {path} socket: {reason}",
                      path=self.http_request_path, reason=admission.refusal)
            return
        memory = None
        if self.factory.store is not None:
            memory = StoredConversation(
                self.factory.store,
                admission.username,
                admission.session_id or default_live_session(admission.username),
            )
            memory.opened.addErrback(self._memory_refused)
        self.session = LiveSession(
            username=admission.username,
            pipeline=self.factory.pipeline,
            clock=self.factory.clock,
            emit=self.send,
            memory=memory,
        )
        self.factory.connections.add(self)

    def _memory_refused(self, failure: Failure) -> None:
        if failure.check(PermissionError):
            self.send(frames.error(frames.FORBIDDEN, "this session belongs to another user"))
            self.close_with(POLICY_VIOLATION, "Forbidden session")
        else:
            _log.failure("Could not open the stored conversation", failure)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.session is None:
            return  # refused and closing: the close frame already explains
        try:
            frame = frames.decode(payload, isBinary)
        except FrameError as e:
            self.send(e.frame())
            return
        mode = self.admission.mode or frame.get("ct", "live")
        if mode == "live":
            self.session.receive(frame)
        elif mode == "chat":
            if self.chat is None:
                self.chat = ChatChannel(self.factory.chat, self.session.username, self.send)
            self.chat.receive(frame)
        else:
            self.send(frames.error(frames.INVALID_MESSAGE_FORMAT, "field 'ct' must be 'live' or 'chat'"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.chat is not None:
            self.chat.close()
        self.factory.connections.discard(self)

    def close_with(self, code: int, reason: str) -> None:
        """Close with a protocol code such as 1008 or 1001.

        Autobahn's ``sendClose`` accepts only 1000 and 3000–4999 from
        applications; the reference's clients expect the standard codes.
        """
        self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)

    def send(self, frame: Frame) -> None:
        """Encode and send one frame, unless the socket is already closing."""
        if self.state == self.STATE_OPEN:
            self.sendMessage(frames.encode(frame))

    # Autobahn builds a coloured debug line (``hltype``/``hlval``) for every
    # read and every write, even with debug logging off: 2.5 µs each, half
    # the cost of sending a frame (a text turn sends about 60). These two
    # overrides skip only that line.

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if sync or chopsize or self.send_queue or self.logOctets or self.state != self.STATE_OPEN:
            super().sendData(data, sync, chopsize)  # queued, chopped or logged: Autobahn's way
            return
        self.transport.write(data)
        self.trafficStats.outgoingOctetsWireLevel += len(data)


class LiveServerFactory(WebSocketServerFactory):
    """Per-endpoint factory; every endpoint shares the same limits and pipeline."""

    protocol = LiveServerProtocol

    def __init__(
        self,
        *,
        gate: Gate,
        pipeline: Pipeline,
        limits: ServerConfig,
        connections: ConnectionTracker,
        clock: IReactorTime,
        chat: ChatService,
        store: ConversationStore | None = None,
    ) -> None:
        # No URL: Autobahn rejects port 0 in one, and the Site routes by path.
        super().__init__(server=f"livetx/{__version__}")
        self.chat = chat
        self.store = store
        self.gate = gate
        self.pipeline = pipeline
        self.connections = connections
        self.clock = clock
        apply_limits(self, limits)


def apply_limits(factory: WebSocketServerFactory, limits: ServerConfig) -> None:
    """Autobahn's defaults are unlimited; every socket livetx serves gets these."""
    factory.setProtocolOptions(
        maxFramePayloadSize=limits.max_frame_bytes,
        maxMessagePayloadSize=limits.max_message_bytes,
        openHandshakeTimeout=limits.handshake_timeout,
        closeHandshakeTimeout=limits.close_timeout,
        autoPingInterval=limits.ping_interval,
        autoPingTimeout=limits.ping_timeout,
        autoFragmentSize=0,
        failByDrop=False,
        perMessageCompressionAccept=lambda offers: None,
        webStatus=False,  # no HTML status page (it names the Autobahn version)
    )


class ConnectionTracker(Service):
    """Knows the open sockets so that stopping the server closes them with 1001."""

    def __init__(self) -> None:
        self._open: set[LiveServerProtocol] = set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, protocol: LiveServerProtocol) -> None:
        self._open.add(protocol)

    def discard(self, protocol: LiveServerProtocol) -> None:
        self._open.discard(protocol)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        closing = []
        for protocol in list(self._open):
            done: Deferred[None] = Deferred()
            protocol.is_closed.addBoth(lambda _, d=done: d.callback(None))
            protocol.close_with(GOING_AWAY, "Server shutting down")
            closing.append(done)
        return DeferredList(closing)
