"""The thin Autobahn layer: decode a message, hand it to the session, encode replies.

No protocol rule lives here; that is :mod:`livetx.live.session`. This module
only owns what needs the socket: the handshake outcome, the 1008 refusals,
and routing frames by mode on the unified endpoint.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any, Callable, Protocol

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.types import ConnectionRequest
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from livetx import __version__
from livetx.config import ServerConfig
from livetx.deferreds import waiter_for
from livetx.live import frames
from livetx.live.frames import Frame, FrameError
from livetx.live.session import LiveSession, Pipeline
from livetx.metrics import ServerMetrics, TurnObserver
from livetx.store import ConversationStore
from livetx.store.conversation import StoredConversation, default_live_session
from livetx.chat.channel import ChatChannel
from livetx.chat.service import ChatService
from livetx.live.journal import Journals, MemoryJournals
from livetx.web.admission import Admission, FrameRate, Gate, Verdict, refusal
from livetx.web.resume import Resumable, opted_in

_log = Logger()

NORMAL = 1000
POLICY_VIOLATION = 1008
GOING_AWAY = 1001

#: Frames still taken while the server drains: they stop work, never start it.
STOPPING = frozenset({"interrupt", "truncate"})


@implementer(IPushProducer)
class SendBuffer:
    """Registered with the socket's transport, which says when its buffer is full.

    While the transport is paused (the client reads slower than we write),
    ``pause`` holds back the session's speech, the bulk of what it sends;
    every byte still sent waits in memory, and past ``limit`` of them the
    client is too slow to serve and :meth:`sent` says so.
    """

    def __init__(self, limit: int, pause: Callable[[], None] = lambda: None,
                 resume: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.paused = False
        self.waiting = 0
        self._pause = pause
        self._resume = resume

    def pauseProducing(self) -> None:
        self.paused = True
        self._pause()

    def resumeProducing(self) -> None:
        self.paused = False
        self.waiting = 0
        self._resume()

    def stopProducing(self) -> None:
        self.paused = True

    def sent(self, size: int) -> bool:
        """Account for ``size`` bytes written; true when the client is hopelessly behind."""
        if self.paused:
            self.waiting += size
        return 0 < self.limit < self.waiting


class _FromFactory:
    """One Autobahn setting, read from the factory when the socket first uses it.

    Autobahn copies each of its ~30 settings from the factory onto every new
    socket and pretty-prints the list for a debug line, debug logging on or
    not: a tenth of a millisecond a socket, a fifth of a connection's cost.
    With the list it walks left empty (``CONFIG_ATTRS``), each setting comes
    through here instead and is kept on the socket after its first read.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, protocol: Any, owner: type | None = None) -> Any:
        if protocol is None:
            return self
        value = protocol.__dict__[self.name] = getattr(protocol.factory, self.name)
        return value


class LiveServerProtocol(TimeoutMixin, WebSocketServerProtocol):
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
    resumable: Resumable | None = None
    #: Autobahn's settings come through :class:`_FromFactory` (set below the class).
    CONFIG_ATTRS: tuple[str, ...] = ()

    def onConnect(self, request: ConnectionRequest) -> Deferred[None] | None:
        self.admission = self.factory.gate(request)
        shared = self.factory.connections.shared
        admission = self.admission
        if shared is None or admission.refusal is not None or admission.username is None:
            return None
        limits = self.factory.limits
        d = shared.acquire(_user(admission), admission.key_id,
                           limits.max_connections_per_user, limits.max_connections_per_key)
        return d.addCallbacks(self._slot, self._no_slot)

    def _slot(self, crowded: str | None) -> None:
        """The cluster's answer: a slot is ours, or the reason there is none."""
        if crowded is not None:
            self.admission = refusal(crowded, frames.RATE_LIMITED, notice=bool(self.admission.key_id))
        elif self.state == self.STATE_CLOSED:  # the client left while Redis answered
            self._give_back(self.admission)
        else:
            self.holds_slot = True

    def _no_slot(self, failure: Failure) -> None:
        _log.warn("Cluster-wide connection limits unavailable, counting in this process: {e}",
                  e=failure.getErrorMessage())

    def _give_back(self, admission: Admission) -> None:
        shared = self.factory.connections.shared
        if shared is not None:
            shared.release(_user(admission), admission.key_id)

    def onOpen(self) -> None:
        if self.factory.connections.draining:  # the tracker has closed its sockets, or soon will
            self.close_with(GOING_AWAY, "Server shutting down")
            return
        admission = self.admission
        if admission.refusal is None and admission.username is not None:
            crowded = self.factory.connections.crowded(admission, self.factory.limits)
            if crowded is not None:
                admission = refusal(crowded, frames.RATE_LIMITED, notice=bool(admission.key_id))
        if admission.refusal is not None or admission.username is None:
            if admission.notice is not None:
                self.send(admission.notice)
            self.close_with(POLICY_VIOLATION, admission.refusal or "Unauthorized")
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
        # Twisted Web's channel registered itself on this transport; the socket is ours now.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self.buffer, True)
        self.callLater = self.factory.clock.callLater
        self.setTimeout(limits.idle_timeout or None)
        memory = None
        if self.factory.store is not None:
            memory = StoredConversation(
                self.factory.store,
                admission.username,
                admission.session_id or default_live_session(admission.username),
            )
            memory.opened.addErrback(self._memory_refused)
        self.resumable = Resumable(self.factory.journals, admission.username, self.factory.clock, self.send,
                                   self._error)
        self.session = LiveSession(
            username=admission.username,
            pipeline=self.factory.pipeline,
            clock=self.factory.clock,
            emit=self.resumable.out,
            memory=memory,
        )
        self.factory.connections.add(self)
        self.observer = self.factory.metrics.opened(
            self.factory.endpoint, admission.mode, admission.username, self.factory.clock)
        detection = self.http_request_params.get("turn_detection")
        if detection:  # talk mode asked for in the URL: the same as a session_update frame
            self.session.receive({"t": "session_update", "turn_detection": detection[0]})
        if opted_in(self.http_request_params):
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
        if failure.check(PermissionError):
            self.send(frames.error(frames.FORBIDDEN, "this session belongs to another user"))
            self.close_with(POLICY_VIOLATION, "Forbidden session")
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
                self.close_with(POLICY_VIOLATION, "Too many messages")
            else:
                self.send(self._error(frames.RATE_LIMITED, "too many messages; slow down"))
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
            self.send(e.frame())
            return
        if draining and frame.get("t") not in STOPPING:
            self._refuse_while_draining()
            return
        assert self.resumable is not None
        if self.resumable.receive(frame):
            return
        mode = self.admission.mode or frame.get("ct", "live")
        if mode == "live":
            self.session.receive(frame)
        elif mode == "chat":
            if self.chat is None:
                assert self.resumable is not None
                self.chat = ChatChannel(self.factory.chat, self.session.username, self.resumable.out)
            self.chat.receive(frame)
        else:
            self.send(frames.error(frames.INVALID_MESSAGE_FORMAT, "field 'ct' must be 'live' or 'chat'"))

    def _refuse_while_draining(self) -> None:
        """Running turns finish, nothing new starts: say so once, then drop input.

        Once, because a device streams audio at 50 frames a second and each
        would otherwise earn its own error frame.
        """
        if not self.told_draining:
            self.told_draining = True
            self.send(self._error(frames.PROCESSING_ERROR, "server is shutting down"))

    @property
    def busy(self) -> bool:
        """A live or chat turn is running on this socket."""
        live = self.session is not None and self.session.state == "processing"
        return live or (self.chat is not None and self.chat.busy)

    def _error(self, code: str, message: str) -> Frame:
        """An error frame in the shape this socket's clients read."""
        return (frames.chat_error if self.admission.mode == "chat" else frames.error)(code, message)

    def timeoutConnection(self) -> None:
        """Nothing went either way for ``idle_timeout`` seconds."""
        self.close_with(NORMAL, "Idle timeout")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.setTimeout(None)
        busy = self.busy
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
        if self.resumable is None or not self.resumable.closed(busy, interrupt, finish):
            finish()  # else the turn goes on into the resume journal, and finishes then
        self.factory.connections.discard(self)
        if self.holds_slot:
            self.holds_slot = False
            self._give_back(self.admission)
        if self.observer is not None:
            self.observer.closed()
        if self.finished is not None and not self.finished.called:
            self.finished.callback(None)

    def close_with(self, code: int, reason: str) -> None:
        """Close with a protocol code such as 1008 or 1001.

        Autobahn's ``sendClose`` accepts only 1000 and 3000–4999 from
        applications; the reference's clients expect the standard codes.
        """
        self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)

    def send(self, frame: Frame | bytes) -> None:
        """Encode and send one frame (bytes: a binary message), unless the socket is closing."""
        if self.state == self.STATE_OPEN:
            binary = isinstance(frame, bytes)
            payload = frame if binary else frames.encode(frame)
            self.sendMessage(payload, isBinary=binary)
            self.resetTimeout()
            if not binary and self.observer is not None:
                self.observer.sent(frame)
            if self.buffer is not None and self.buffer.sent(len(payload)):
                _log.warn("Closing a socket of {user}: it reads too slowly", user=self.admission.username)
                self.close_with(POLICY_VIOLATION, "Client reads too slowly")

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


for _name in WebSocketServerProtocol.CONFIG_ATTRS:
    setattr(LiveServerProtocol, _name, _FromFactory(_name))


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
        metrics: ServerMetrics | None = None,
        endpoint: str = "",
        journals: Journals | None = None,
    ) -> None:
        # No URL: Autobahn rejects port 0 in one, and the Site routes by path.
        super().__init__(server=f"livetx/{__version__}")
        self.chat = chat
        self.store = store
        self.journals = journals or MemoryJournals(clock)
        self.gate = gate
        self.pipeline = pipeline
        self.connections = connections
        self.clock = clock
        self.metrics = metrics or ServerMetrics()
        self.limits = limits
        #: The mounted path, for metric labels and logs. Not the request's path:
        #: the resource is a leaf, so any sub-path reaches it, and labels from
        #: client-chosen text would grow the metrics without bound.
        self.endpoint = endpoint
        apply_limits(self, limits)


class EchoProtocol(WebSocketServerProtocol):
    """Test only: echoes every message, so a conformance suite exercises our stack."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def echo_factory(limits: ServerConfig) -> WebSocketServerFactory:
    """The echo endpoint, with exactly the limits every real endpoint gets."""
    factory = WebSocketServerFactory(server=f"livetx/{__version__}")
    factory.protocol = EchoProtocol
    apply_limits(factory, limits)
    return factory


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


def _decrement(counter: Counter[Any], key: Any) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def _user(admission: Admission) -> tuple[str, str]:
    """Whose sockets count together against ``max_connections_per_user``.

    An API key holder names any username it likes, so its sockets count
    apart from the dashboard's (JWT) ones and from other keys': a key cannot
    use up a user's own allowance and lock the user out.
    """
    return admission.key_id or "", admission.username or ""


class SharedSlots(Protocol):
    """Connection counts kept across processes (``livetx.cluster.limits.ConnectionSlots``)."""

    def acquire(self, user: tuple[str, str], key_id: str | None, user_limit: int,
                key_limit: int) -> Deferred[str | None]: ...

    def release(self, user: tuple[str, str], key_id: str | None) -> object: ...


class ConnectionTracker(Service):
    """Knows the open sockets, so that stopping the server can drain and close them.

    Stopping is graceful: the listening ports stop first (they are stopped
    before this service), sockets refuse new work, running turns get up to
    ``grace`` seconds to finish, then every socket is closed with 1001 (a turn
    still running is interrupted, and its partial reply stored). ``drained``
    fires when all of that is over, so the store can close after it.
    """

    #: How often draining looks whether the running turns are done.
    POLL = 0.05

    def __init__(self, clock: IReactorTime | None = None, grace: float = 0.0) -> None:
        self._open: set[LiveServerProtocol] = set()
        self._users: Counter[tuple[str, str]] = Counter()
        self._keys: Counter[str] = Counter()
        self._clock = clock
        self._grace = grace
        self.draining = False
        self.drained: Deferred[None] = Deferred()
        #: Cluster-wide slots, checked at the handshake as well as the counts here.
        self.shared: SharedSlots | None = None

    def __len__(self) -> int:
        return len(self._open)

    def crowded(self, admission: Admission, limits: ServerConfig) -> str | None:
        """Why one more socket for this user or key would be too many, if it would."""
        if 0 < limits.max_connections_per_user <= self._users[_user(admission)]:
            return "Too many connections for this user"
        if admission.key_id and 0 < limits.max_connections_per_key <= self._keys[admission.key_id]:
            return "Too many connections for this API key"
        return None

    def add(self, protocol: LiveServerProtocol) -> None:
        if protocol not in self._open:
            self._open.add(protocol)
            self._users[_user(protocol.admission)] += 1
            if protocol.admission.key_id:
                self._keys[protocol.admission.key_id] += 1

    def discard(self, protocol: LiveServerProtocol) -> None:
        if protocol in self._open:
            self._open.remove(protocol)
            _decrement(self._users, _user(protocol.admission))
            if protocol.admission.key_id:
                _decrement(self._keys, protocol.admission.key_id)

    def revoked(self, key_id: str) -> None:
        """An API key was revoked (here or on another node): close its sockets."""
        for protocol in [p for p in self._open if p.admission.key_id == key_id]:
            protocol.close_with(POLICY_VIOLATION, "API key revoked")

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.draining = True
        for protocol in self._open:  # no new turn may start from speech already heard
            protocol.stop_listening()
        done = self._drain().addCallback(lambda _: self._close_all())
        done.addBoth(self._drained)
        return done

    def _drain(self) -> Deferred[None]:
        """Fire when no socket runs a turn, or when the grace period is over."""
        if self._clock is None or self._grace <= 0:
            return succeed(None)
        deadline = self._clock.seconds() + self._grace
        idle: Deferred[None] = Deferred()

        def look() -> None:
            if not any(p.busy for p in self._open) or self._clock.seconds() >= deadline:
                idle.callback(None)
            else:
                self._clock.callLater(self.POLL, look)

        look()
        return idle

    def _close_all(self) -> Deferred[Any]:
        closing = []
        for protocol in list(self._open):
            if protocol.finished is not None:
                closing.append(waiter_for(protocol.finished))
            protocol.close_with(GOING_AWAY, "Server shutting down")
        return DeferredList(closing)

    def _drained(self, result: Any) -> Any:
        if not self.drained.called:
            self.drained.callback(None)
        return result
