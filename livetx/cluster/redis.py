"""The one module that knows txredisapi: commands, scripts, publish and subscribe.

txredisapi speaks RESP on Twisted's own reactor, so the server keeps its
epoll reactor and every Redis reply is a Deferred like the store's
(docs/deployment.md says why it was chosen over redis-py's asyncio client).
Everything else in :mod:`livetx.cluster` talks to :class:`Redis` only.

A command never waits longer than ``timeout``: txredisapi queues commands
while it reconnects, and a server whose Redis went away must fail the
command and fall back, not hang a handshake.
"""

from __future__ import annotations

import time
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.fences.txredisapi import Subscriptions, lost_after_connecting, reconnect_every

_log = Logger()

#: Seconds a command may take before it fails (Redis answers in well under a millisecond).
TIMEOUT = 2.0
#: Reconnecting: the first try after this many seconds, then at most this often. txredisapi's
#: own backoff (1 s, growing by e up to 10 s) left a node without Redis for up to 10 s after
#: Redis was back: resume and the relay failed meanwhile, while Redis answered the other nodes.
RECONNECT_FIRST = 0.1
RECONNECT_EVERY = 1.0

Handler = Callable[[str], None]


def _address(url: str) -> tuple[str, int, int, str | None]:
    parts = urlsplit(url)
    database = parts.path.strip("/")
    password = unquote(parts.password) if parts.password else None
    return parts.hostname or "localhost", parts.port or 6379, int(database or 0), password


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """A subscribing connection; messages go to the factory's :class:`Redis`."""

    owner: Redis

    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        self.owner._dispatch(channel, message)


class _Subscriptions(Subscriptions):
    """Keeps one subscribing connection, subscribing again to every channel after a reconnect."""

    protocol = _Subscriber

    def __init__(self, owner: Redis, password: str | None) -> None:
        super().__init__(isLazy=True)
        self.owner = owner
        self.password = password
        self.connection: _Subscriber | None = None

    def buildProtocol(self, addr: Any) -> _Subscriber:
        protocol: _Subscriber = super().buildProtocol(addr)
        protocol.owner = self.owner
        return protocol

    def connection_made(self, conn: _Subscriber) -> None:
        self.connection = conn
        channels = list(self.owner._handlers)
        d: Deferred[Any] = conn.subscribe(channels) if channels else succeed(None)
        d.addCallbacks(lambda _: self.owner._subscribed(), lambda f: _log.warn("Redis subscribe failed: {e}", e=f.value))

    def connection_lost(self, conn: _Subscriber) -> None:
        if self.connection is conn:
            self.connection = None


class Redis:
    """One connection for commands, one for subscriptions, both reconnecting.

    One command connection, not a pool: commands reach Redis in the order
    they were sent, so a chat turn's events are published in order (Redis
    pipelines them; a second connection would let them overtake each other).
    """

    def __init__(self, url: str, reactor: Any, timeout: float = TIMEOUT) -> None:
        host, port, database, password = _address(url)
        self._reactor: IReactorTime = reactor
        self._timeout = timeout
        self.where = f"{host}:{port}/{database}"
        self._pool = txredisapi.lazyConnectionPool(
            host, port, dbid=database, poolsize=1, password=password,
            connectTimeout=timeout, replyTimeout=timeout, convertNumbers=False,
        )
        self._handlers: dict[str, list[Handler]] = {}
        self._on_subscribed: list[Callable[[], None]] = []
        self._subscriptions = _Subscriptions(self, password)
        reconnect_every(RECONNECT_EVERY, RECONNECT_FIRST, self._pool, self._subscriptions)
        self._subscriptions.startConnecting(HostnameEndpoint(reactor, host, port, timeout=timeout))

    def command(self, *args: Any) -> Deferred[Any]:
        """Run one command; fails at once while disconnected, or after ``timeout`` without an answer."""
        if lost_after_connecting(self._pool):  # fail now, not after a reconnect's handshake
            return _failed(txredisapi.ConnectionError("not connected to Redis"))  # after a handshake's wait
        try:
            d: Deferred[Any] = self._pool.execute_command(*args)
        except txredisapi.ConnectionError as e:
            return _failed(e)
        return d.addTimeout(self._timeout, self._reactor)

    def script(self, source: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        """Run a Lua script (``EVAL``: the scripts are short, so sending them each time is cheap)."""
        return self.command("EVAL", source, len(keys), *keys, *args)

    def publish(self, channel: str, message: str) -> Deferred[Any]:
        return self.command("PUBLISH", channel, message)

    def ping(self) -> Deferred[Any]:
        return self.command("PING")

    @property
    def subscribing(self) -> bool:
        """The subscribing connection is up (its subscriptions are sent as it opens)."""
        connection = self._subscriptions.connection
        return connection is not None and bool(connection.connected)

    def subscribe(self, channel: str, handler: Handler) -> Deferred[Any]:
        """Call ``handler(message)`` for every message on ``channel`` (again after reconnects).

        The Deferred fires once Redis has confirmed the subscription (fails
        when it cannot be reached); messages published after that reach ``handler``.
        """
        handlers = self._handlers.setdefault(channel, [])
        handlers.append(handler)
        connection = self._subscriptions.connection
        if connection is None or not connection.connected:
            return _failed(txredisapi.ConnectionError("not connected to Redis"))
        if len(handlers) > 1:
            return succeed(None)
        d: Deferred[Any] = connection.subscribe(channel)
        return d.addTimeout(self._timeout, self._reactor)

    def when_subscribed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the subscriptions are made: at first, and after every reconnect."""
        self._on_subscribed.append(callback)

    def _subscribed(self) -> None:
        for callback in self._on_subscribed:
            callback()

    def listen(self, channel: str, handler: Handler) -> None:
        """:meth:`subscribe` for good: if Redis is away now, the subscription is made when it is back."""
        self.subscribe(channel, handler).addErrback(lambda _: None)

    def unsubscribe(self, channel: str, handler: Handler) -> None:
        handlers = self._handlers.get(channel, [])
        if handler in handlers:
            handlers.remove(handler)
        if not handlers and channel in self._handlers:
            del self._handlers[channel]
            connection = self._subscriptions.connection
            if connection is not None and connection.connected:
                connection.unsubscribe(channel).addErrback(lambda f: None)

    def _dispatch(self, channel: str, message: str) -> None:
        for handler in list(self._handlers.get(channel, ())):
            try:
                handler(message)
            except Exception:
                _log.failure("Bug in a handler of Redis channel {channel}", channel=channel)

    def close(self) -> Deferred[Any]:
        """Stop reconnecting and close every connection."""
        self._subscriptions.disconnect()
        d: Deferred[Any] = self._pool.disconnect()
        return d


#: Seconds between two warnings about the same thing (a Redis outage would log every socket's).
WARN_EVERY = 10.0
_warned: dict[str, tuple[float, int]] = {}


def warn_unreachable(failure: Failure, what: str) -> None:
    """An errback for work Redis could not do: say what (at most every ``WARN_EVERY`` s), and go on."""
    now = time.monotonic()
    last, skipped = _warned.get(what, (-WARN_EVERY, 0))
    if now - last < WARN_EVERY:
        _warned[what] = (last, skipped + 1)
        return
    _warned[what] = (now, 0)
    _log.warn("Redis did not answer, could not {what} ({skipped} more times since the last warning): {error}",
              what=what, skipped=skipped, error=failure.getErrorMessage())


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d
