"""The register of open sockets: what the server needs to count, revoke and drain them.

:class:`ConnectionTracker` counts sockets per user and key, closes those of
a revoked key, and drains and closes them all when the server stops. It
knows a socket only as a :class:`Tracked`, a handful of members; the socket
(:mod:`livetx.web.protocol`) imports this module, not the other way round.
Pacing a socket's output is :mod:`livetx.web.flow`.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime

from livetx.auth.keys import REVOKED
from livetx.config import ServerConfig
from livetx.deferreds import waiter_for
from livetx.errors import CloseCode
from livetx.web.admission import Admission

if TYPE_CHECKING:
    from livetx.chat.service import ChatService


class Tracked(Protocol):
    """What the tracker needs of a socket (:class:`livetx.web.protocol.LiveServerProtocol`)."""

    #: Who opened it, and with which key: what it counts against.
    admission: Admission
    #: Fires once the socket has closed and let go of its turns.
    finished: Deferred[None] | None

    @property
    def busy(self) -> bool:
        """A live or chat turn runs on it."""

    def turns_over(self) -> Deferred[None]:
        """Fires when its running turns are over and stored."""

    def stop_listening(self) -> None:
        """Start no turn from speech already heard."""

    def stop_turn(self) -> None:
        """Stop a running turn now (its text so far is kept)."""

    def revoke(self, reason: str) -> None:
        """Its credential is no longer valid: tell the client and close (1008)."""

    def close_with(self, code: int, reason: str) -> None:
        """Close with a WebSocket close code."""


def _decrement(counter: Counter[Any], key: Any) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def user_key(admission: Admission) -> tuple[str, str]:
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
    """Knows the open sockets and the running turns, so that stopping the server can drain them.

    Stopping is graceful, and the same for every kind of turn (live, chat on
    a socket, chat over SSE): the listening ports stop first (they are
    stopped before this service), sockets refuse new work, running turns get
    up to ``grace`` seconds to finish; a turn still running then is stopped,
    stored marked interrupted with the text so far, and its client gets a
    last event (live: ``stop_play``; chat: ``error``, then ``end``).
    Then every socket is closed with 1001, and the event streams that
    ended meanwhile get their last bytes out (:meth:`hold`); ``drained``
    fires when all of that is over, so the store can close after it.
    """

    #: How long stopped turns may take to store their text and say ``end``.
    STOPPING_WAIT = 5.0

    def __init__(self, clock: IReactorTime | None = None, grace: float = 0.0,
                 chat: ChatService | None = None) -> None:
        self._open: set[Tracked] = set()
        self._users: Counter[tuple[str, str]] = Counter()
        self._keys: Counter[str] = Counter()
        self._clock = clock
        self._grace = grace
        self._chat = chat
        self.draining = False
        self.drained: Deferred[None] = Deferred()
        #: Cluster-wide slots, checked at the handshake as well as the counts here.
        self.shared: SharedSlots | None = None
        #: HTTP responses still being written out while the server stops.
        self._held: set[Deferred[None]] = set()

    def __len__(self) -> int:
        return len(self._open)

    def crowded(self, admission: Admission, limits: ServerConfig) -> str | None:
        """Why one more socket for this user or key would be too many, if it would."""
        if 0 < limits.max_connections_per_user <= self._users[user_key(admission)]:
            return "Too many connections for this user"
        if admission.key_id and 0 < limits.max_connections_per_key <= self._keys[admission.key_id]:
            return "Too many connections for this API key"
        return None

    def claim(self, admission: Admission, limits: ServerConfig) -> Deferred[str | None] | None:
        """Ask the cluster for an admitted socket's slot: fires with why there is none, or None once held.

        None instead of a Deferred: there is no cluster, or nobody was admitted.
        """
        if self.shared is None or admission.refusal is not None or admission.username is None:
            return None
        return self.shared.acquire(user_key(admission), admission.key_id,
                                   limits.max_connections_per_user, limits.max_connections_per_key)

    def give_back(self, admission: Admission) -> None:
        """A socket that held a cluster slot closed."""
        if self.shared is not None:
            self.shared.release(user_key(admission), admission.key_id)

    def add(self, protocol: Tracked) -> None:
        if protocol not in self._open:
            self._open.add(protocol)
            self._users[user_key(protocol.admission)] += 1
            if protocol.admission.key_id:
                self._keys[protocol.admission.key_id] += 1

    def discard(self, protocol: Tracked) -> None:
        if protocol in self._open:
            self._open.remove(protocol)
            _decrement(self._users, user_key(protocol.admission))
            if protocol.admission.key_id:
                _decrement(self._keys, protocol.admission.key_id)

    def close_keys(self, revoked: frozenset[str]) -> None:
        """Close every socket opened with one of these API keys: they are no longer valid."""
        for protocol in [p for p in self._open if p.admission.key_id in revoked]:
            protocol.revoke(REVOKED)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.draining = True
        if self._chat is not None:
            self._chat.draining = True
        for protocol in self._open:  # no new turn may start from speech already heard
            protocol.stop_listening()
        done = self._drain().addCallback(lambda _: self._stop_turns()).addCallback(lambda _: self._close_all())
        done.addBoth(self._drained)
        return done

    def _busy(self) -> bool:
        return any(p.busy for p in self._open) or (self._chat is not None and self._chat.busy)

    def _turns_over(self) -> Deferred[None]:
        """Fires once no turn runs anywhere, waiting on the turns themselves."""
        waits = [p.turns_over() for p in self._open]
        if self._chat is not None:
            waits.append(self._chat.turns_over())
        # A turn queued behind an interrupted one starts as that one ends: look again.
        return DeferredList(waits, consumeErrors=True).addCallback(
            lambda _: self._turns_over() if self._busy() else None)

    def _drain(self) -> Deferred[None]:
        """Fire when no turn runs, or when the grace period is over."""
        if self._clock is None or self._grace <= 0 or not self._busy():
            return succeed(None)
        return self._within(self._turns_over(), self._grace)

    def _stop_turns(self) -> Deferred[None]:
        """Stop what still runs; each turn stores its text so far and tells its client."""
        for protocol in self._open:
            protocol.stop_turn()
        if self._chat is not None:
            self._chat.stop_all()
        if self._clock is None or not self._busy():
            return succeed(None)
        # Storing a stopped turn takes a transaction; a store that hangs must not hang the exit.
        return self._within(self._turns_over(), self.STOPPING_WAIT)

    def _within(self, d: Deferred[None], seconds: float) -> Deferred[None]:
        """Fires when ``d`` does or after ``seconds``, whichever is first; ``d`` is left alone."""
        assert self._clock is not None
        first: Deferred[None] = Deferred()

        def fire(_: object = None) -> None:
            if not first.called:
                first.callback(None)

        timer = self._clock.callLater(seconds, fire)
        d.addBoth(lambda _: timer.cancel() if timer.active() else None).addBoth(fire)
        return first

    def hold(self, written: Deferred[None]) -> None:
        """The server stops once ``written`` fires (or after ``STOPPING_WAIT``): a response's last bytes are out.

        An event stream's ``end`` is written into the transport's buffer, and
        a reactor that stops then drops what was not sent yet: a client of a
        turn stopped by the drain would see the stream cut instead of ended.
        """
        self._held.add(written)
        written.addBoth(lambda _: self._held.discard(written))

    def _close_all(self) -> Deferred[Any]:
        closing = []
        if self._held and self._clock is not None:
            written = DeferredList(list(self._held)).addCallback(lambda _: None)
            closing.append(self._within(written, self.STOPPING_WAIT))
        for protocol in list(self._open):
            if protocol.finished is not None:
                closing.append(waiter_for(protocol.finished))
            protocol.close_with(CloseCode.GOING_AWAY, "Server shutting down")
        return DeferredList(closing)

    def _drained(self, result: Any) -> Any:
        if not self.drained.called:
            self.drained.callback(None)
        return result
