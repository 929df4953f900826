"""The thin Autobahn layer: decode a message, hand it to the session, encode replies.

No protocol rule lives here; that is :mod:`livetx.live.session`. This module
only owns what needs the socket: the handshake outcome, the 1008 refusals,
and routing frames by mode on the unified endpoint.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable, cast

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from livetx import __version__
from livetx.chat.channel import ChatChannel
from livetx.chat.service import ChatService
from livetx.config import ServerConfig
from livetx.domain import Engines, MemoryOpener
from livetx.errors import CloseCode, ErrorCode, SessionForbidden
from livetx.fences.autobahn import QuietIO, close_with_code, settings_from_factory
from livetx.fences.twisted_web import take_over_producer
from livetx.live import frames
from livetx.live.frames import Frame, FrameError
from livetx.live.session import LiveSession
from livetx.metrics import ServerMetrics, TurnObserver
from livetx.web.admission import Admission, FrameRate, Verdict, WaitingGate, refusal
from livetx.web.connections import ConnectionTracker
from livetx.web.flow import SendBuffer
from livetx.web.sockets import apply_limits as apply_limits  # every endpoint's, importable from here as before
from livetx.web.sockets import memory_journals

if TYPE_CHECKING:  # resume's modules load with the first socket that opts in
    from livetx.live.journal import Journals
    from livetx.web.resume import Resumable

_log = Logger()

#: Frames still taken while the server drains: they stop work, never start it.
STOPPING = frozenset({"interrupt", "truncate"})


@settings_from_factory
class LiveServerProtocol(TimeoutMixin, QuietIO):  # type: ignore[misc]  # Autobahn's two bases disagree on `peer`
    """One client socket of any of the three Live API endpoints."""

    factory: LiveServerFactory
    admission: Admission = Admission(refusal="Handshake not completed")
    session: LiveSession | None = None
    chat: ChatChannel | None = None
    observer: TurnObserver | None = None
    rate: FrameRate | None = None
    buffer: SendBuffer | None = None
    #: Fires once ``onClose`` has let go of the session (and stored what it had).
    finished: Deferred[None] | None = None
    #: The client was told the server is shutting down (it is told once).
    told_draining = False
    #: A cluster-wide connection slot is held for this socket (given back on close).
    holds_slot = False
    #: The socket's part in resume, once its client opted in or sent ``resume``.
    resumable: Resumable | None = None
    #: Client frames decoded so far (``resume`` must be the first).
    frames_in = 0

    # Autobahn waits for a Deferred from onConnect (txaio.as_future); its annotation omits that.
    def onConnect(self, request: ConnectionRequest) -> Deferred[None] | None:  # type: ignore[override]
        admitted = self.factory.gate(request)
        if isinstance(admitted, Deferred):  # a key looked up first (key_looked_up)
            return admitted.addCallback(self._admitted)
        return self._admitted(admitted)

    def _admitted(self, admission: Admission) -> Deferred[None] | None:
        self.admission = admission
        claim = self.factory.connections.claim(admission, self.factory.limits)
        # Redis did not answer (the cluster logged it): this process's own limits apply.
        return None if claim is None else claim.addCallbacks(self._slot, lambda _: None)

    def _slot(self, crowded: str | None) -> None:
        """The cluster's answer: a slot is ours, or the reason there is none."""
        if crowded is not None:
            self.admission = refusal(crowded, ErrorCode.RATE_LIMITED, notice=bool(self.admission.key_id))
        elif self.state == self.STATE_CLOSED:  # the client left while Redis answered
            self.factory.connections.give_back(self.admission)
        else:
            self.holds_slot = True

    def onOpen(self) -> None:
        if self.factory.connections.draining:  # the tracker has closed its sockets, or soon will
            self.close_with(CloseCode.GOING_AWAY, "Server shutting down")
            return
        admission = self.admission
        if admission.refusal is None and admission.username is not None:
            crowded = self.factory.connections.crowded(admission, self.factory.limits)
            if crowded is not None:
                admission = refusal(crowded, ErrorCode.RATE_LIMITED, notice=bool(admission.key_id))
        if admission.refusal is not None or admission.username is None:
            if admission.notice is not None:
                self.send(admission.notice)
            self.close_with(CloseCode.POLICY_VIOLATION, admission.refusal or "Unauthorized")
            self.factory.metrics.refused_at(self.factory.endpoint)
            _log.info("Refused a {path} socket: {reason}",
                      path=self.factory.endpoint, reason=admission.refusal)
            return
        self.finished = Deferred()
        limits = self.factory.limits
        self.rate = FrameRate(limits.max_frames_per_second, self.factory.clock)
        self.buffer = SendBuffer(
            limits.max_send_buffer_bytes, pause=partial(self._flow, False), resume=partial(self._flow, True)
        )
        take_over_producer(cast(IConsumer, self.transport), self.buffer)
        # TimeoutMixin's documented hook for its clock.
        self.callLater = self.factory.clock.callLater  # type: ignore[method-assign, assignment]
        self.setTimeout(limits.idle_timeout or None)
        memory = None
        if self.factory.memories is not None:
            memory = self.factory.memories(admission.username, admission.session_id)
            memory.opened.addErrback(self._memory_refused)
        self.observer = self.factory.metrics.opened(self.factory.endpoint, admission.mode, admission.username)
        self.session = LiveSession(
            username=admission.username,
            engines=self.factory.engines.for_owner(admission.key_id or admission.username),
            clock=self.factory.clock,
            emit=self.emit,
            memory=memory,
            listener=self.observer,
        )
        self.factory.connections.add(self)
        detection = self.http_request_params.get("turn_detection")
        if detection:  # talk mode asked for in the URL: the same as a session_update frame
            self.session.receive({"t": "session_update", "turn_detection": detection[0]})
        if (self.http_request_params.get("resume") or [""])[0].lower() in ("1", "true"):
            self.session.receive({"t": "session_update", "resume": True})

    def stop_listening(self) -> None:
        """The server is stopping: drop what the session has half heard."""
        if self.session is not None:
            self.session.stop_listening()

    def _flow(self, flowing: bool) -> None:
        """The transport's buffer filled up or drained: hold back or release speech."""
        if self.session is not None:
            (self.session.resume_output if flowing else self.session.pause_output)()

    def _memory_refused(self, failure: Failure) -> None:
        if isinstance(failure.value, SessionForbidden):
            self._sent_error(failure.value.code)
            self.send(frames.error(failure.value.code, failure.value.message))
            self.close_with(CloseCode.POLICY_VIOLATION, "Forbidden session")
        else:
            _log.failure("Could not open the stored conversation", failure)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.session is None:
            return  # refused and closing: the close frame already explains
        self.resetTimeout()
        assert self.rate is not None
        verdict = self.rate.admit()
        if verdict is not Verdict.ACCEPT:
            if verdict is Verdict.CLOSE:
                self.close_with(CloseCode.POLICY_VIOLATION, "Too many messages")
            else:
                self.send(self._error(ErrorCode.RATE_LIMITED, "too many messages; slow down"))
            return
        draining = self.factory.connections.draining
        if isBinary and self.session.settings.binary_audio and self.admission.mode != "chat":
            if draining:
                self._refuse_while_draining()
            else:
                self.session.receive_audio(payload)
            return
        try:
            frame = frames.decode(payload, isBinary)
        except FrameError as e:
            self._sent_error(e.code)
            self.send(frames.error(e.code, e.message))
            return
        if draining and frame.get("t") not in STOPPING:
            self._refuse_while_draining()
            return
        self.frames_in += 1
        if (self.resumable is not None or frame.get("t") == "resume") and self._resume_side().receive(frame):
            return
        mode = self.admission.mode or frame.get("ct", "live")
        if mode == "live":
            self.session.receive(frame)
        elif mode == "chat":
            if self.chat is None:
                self.chat = ChatChannel(self.factory.chat, self.session.username, self.emit, self._chat_observer())
            self.chat.receive(frame)
        else:
            self._sent_error(ErrorCode.INVALID_MESSAGE_FORMAT)
            self.send(frames.error(ErrorCode.INVALID_MESSAGE_FORMAT, "field 'ct' must be 'live' or 'chat'"))

    def _chat_observer(self) -> TurnObserver:
        """The chat turns' own listener: on the unified endpoint they may run beside a live turn."""
        admission = self.admission
        return self.factory.metrics.observer(self.factory.endpoint, admission.mode or "per-frame", admission.username or "")

    def emit(self, frame: Frame | bytes) -> None:
        """The session's and the chat channel's way out: through resume once the client opted in."""
        if self.resumable is not None:
            self.resumable.out(frame)
        elif isinstance(frame, dict) and frame.get("t") == "session_updated" and frame["data"].get("resume"):
            self._resume_side().out(frame)
        else:
            self.send(frame)

    def _resume_side(self) -> Resumable:
        """The socket's part in resume (:mod:`livetx.web.resume`), made when first needed."""
        if self.resumable is None:
            from livetx.web.resume import Resumable

            self.resumable = Resumable(self.factory.journals(), self.admission.username or "",
                                       self.send, self._error, heard=self.frames_in > 1,
                                       quota=self.admission.key_id or self.admission.username or "")
        return self.resumable

    def _refuse_while_draining(self) -> None:
        """Running turns finish, nothing new starts: say so once, then drop input.

        Once, because a device streams audio at 50 frames a second and each
        would otherwise earn its own error frame.
        """
        if not self.told_draining:
            self.told_draining = True
            self.send(self._error(ErrorCode.PROCESSING_ERROR, "server is shutting down"))

    @property
    def busy(self) -> bool:
        """A live or chat turn is running on this socket."""
        live = self.session is not None and self.session.busy
        return live or (self.chat is not None and self.chat.busy)

    def turns_over(self) -> Deferred[None]:
        """Fires when the socket's running turns (live or chat) are over and stored."""
        waits = []
        if self.session is not None:
            waits.append(self.session.turn_over())
        if self.chat is not None:
            waits.append(self.chat.turn_over())
        return DeferredList(waits).addCallback(lambda _: None)

    def stop_turn(self) -> None:
        """The grace period is over: stop the live turn as ``interrupt`` would (its text so far is kept)."""
        if self.session is not None:
            self.session.stop()

    def revoke(self, reason: str) -> None:
        """The socket's credential is no longer valid (a revoked API key): say so, and close."""
        self.send(self._error(ErrorCode.UNAUTHORIZED, reason))
        self.close_with(CloseCode.POLICY_VIOLATION, reason)

    def _error(self, code: ErrorCode, message: str) -> Frame:
        """An error frame in the shape this socket's clients read, about to be sent (and so counted)."""
        self._sent_error(code)
        return (frames.chat_error if self.admission.mode == "chat" else frames.error)(code, message)

    def _sent_error(self, code: ErrorCode) -> None:
        if self.observer is not None:
            self.observer.error_sent(code)

    def timeoutConnection(self) -> None:
        """Nothing went either way for ``idle_timeout`` seconds."""
        self.close_with(CloseCode.NORMAL, "Idle timeout")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.setTimeout(None)
        # The running turns (if any) go on into the resume journal, and tell when they are over.
        turn_over = self.turns_over() if self.busy and self.resumable is not None else None
        session, chat, self.session = self.session, self.chat, None

        def finish() -> None:
            if session is not None:
                session.close()
            if chat is not None:
                chat.close()

        def interrupt() -> None:
            for side in (session, chat):
                if side is not None:
                    side.receive({"t": "interrupt"})

        if session is not None:
            session.stop_listening()
        if self.resumable is None or not self.resumable.closed(turn_over, interrupt, finish):
            finish()  # else the turn goes on into the resume journal, and finishes then
        self.factory.connections.discard(self)
        if self.holds_slot:
            self.holds_slot = False
            self.factory.connections.give_back(self.admission)
        if self.observer is not None:
            self.observer.closed()
        if self.finished is not None and not self.finished.called:
            self.finished.callback(None)

    def close_with(self, code: int, reason: str) -> None:
        """Close with a protocol code such as 1008 or 1001 (see :mod:`livetx.fences.autobahn`)."""
        close_with_code(self, code, reason)

    def send(self, frame: Frame | bytes) -> None:
        """Encode and send one frame (bytes: a binary message), unless the socket is closing."""
        if self.state == self.STATE_OPEN:
            # Audio (binary, or Base64 in a `response` frame) is not worth deflating: little gained, much CPU.
            if isinstance(frame, bytes):
                payload = frame
                self.sendMessage(payload, isBinary=True, doNotCompress=True)
                self.resetTimeout()
            else:
                payload = frames.encode(frame)
                self.sendMessage(payload, isBinary=False, doNotCompress=frame.get("t") == "response")
                self.resetTimeout()
            if self.buffer is not None and self.buffer.sent(len(payload)):
                _log.warn("Closing a socket of {user}: it reads too slowly", user=self.admission.username)
                self.close_with(CloseCode.POLICY_VIOLATION, "Client reads too slowly")


class LiveServerFactory(WebSocketServerFactory):
    """Per-endpoint factory; every endpoint shares the same limits and engines."""

    protocol = LiveServerProtocol  # type: ignore[assignment]  # Twisted's annotation wants a generic callable

    def __init__(
        self,
        *,
        gate: WaitingGate,
        engines: Engines,
        limits: ServerConfig,
        connections: ConnectionTracker,
        clock: IReactorTime,
        chat: ChatService,
        memories: MemoryOpener | None = None,
        metrics: ServerMetrics | None = None,
        endpoint: str = "",
        journals: Callable[[], Journals] | None = None,
    ) -> None:
        # No URL: Autobahn rejects port 0 in one, and the Site routes by path.
        super().__init__(server=f"livetx/{__version__}")
        self.chat = chat
        #: Opens each live connection's memory; None: conversations are not kept.
        self.memories = memories
        #: The resume journal, shared by every socket path (made when first asked for).
        self.journals = journals or memory_journals(clock)
        self.gate = gate
        self.engines = engines
        self.connections = connections
        self.clock = clock
        self.metrics = metrics or ServerMetrics()
        self.limits = limits
        #: The mounted path, for metric labels and logs. Not the request's path:
        #: the resource is a leaf, so any sub-path reaches it, and labels from
        #: client-chosen text would grow the metrics without bound.
        self.endpoint = endpoint
        apply_limits(self, limits)
