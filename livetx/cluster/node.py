"""This process as a member of the cluster: its Redis link, heartbeat, and what it listens for.

Built by :func:`livetx.tap.makeService` only when ``[cluster] redis`` is set;
the pieces it holds (:class:`ConnectionSlots`, :class:`ChatRelay`,
:class:`SharedFailedAuth`, the resume journal, the used login links) are handed to the parts of the
server that use them.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall

from livetx.cluster.journal import RedisJournals
from livetx.cluster.limits import HEARTBEAT_TTL, ConnectionSlots, SharedFailedAuth
from livetx.cluster.links import RedisUsedLinks
from livetx.cluster.redis import Redis, warn_unreachable
from livetx.config import ClusterConfig
from livetx.cluster.relay import ChatRelay
from livetx.cluster.revocation import CHANNEL as REVOKED
from livetx.deferreds import waiter_for
from livetx.live.journal import Budget
from livetx.web.connections import ConnectionTracker


class ClusterNode(Service):
    """One process's membership; started before the listening ports, stopped after the sockets."""

    def __init__(self, url: str, reactor: Any, prefix: str = "livetx:") -> None:
        self._after: Deferred[None] | None = None
        self.node = uuid.uuid4().hex[:12]
        self.prefix = prefix
        self.reactor = reactor
        self.redis = Redis(url, reactor)
        self.slots = ConnectionSlots(self.redis, self.node, prefix)
        self.relay = ChatRelay(self.redis, self.node, prefix)
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = reactor

    def join(self, connections: ConnectionTracker, keys: Any) -> None:
        """Take part in the server: its connection counts, key revocations, and its drain."""
        connections.shared = self.slots
        self.on_revoked(lambda key_id: connections.close_keys(frozenset({key_id})))
        refresh = getattr(keys, "refresh", None)  # PostgreSQL's key cache: refuse the key at once too
        if refresh is not None:
            self.on_revoked(lambda _: refresh())
        self._after = connections.drained

    def journals(self, cluster: ClusterConfig) -> RedisJournals:
        """The resume journal, shared by every process."""
        return RedisJournals(self.redis, self.reactor, self.node, cluster.resume_seconds, prefix=self.prefix,
                             budget=Budget.of(cluster))

    def failed_auth(self, limit: int) -> SharedFailedAuth:
        return SharedFailedAuth(limit, self.reactor, self.redis, self.prefix)

    def used_links(self) -> RedisUsedLinks:
        """The record of redeemed login links, shared by every process."""
        return RedisUsedLinks(self.redis, self.prefix)

    def on_revoked(self, close: Callable[[str], None], channel: str = REVOKED) -> None:
        """Call ``close(key_id)`` when ``livetx keys revoke`` revokes a key anywhere (or what ``channel`` carries)."""
        self.redis.listen(self.prefix + channel, close)

    def _heartbeat(self) -> None:
        self.slots.heartbeat().addErrback(warn_unreachable, f"keep this node's heartbeat at {self.redis.where}")

    def startService(self) -> None:
        super().startService()
        self._beat.start(HEARTBEAT_TTL / 3, now=True)

    def stopService(self) -> Deferred[Any]:
        """Once the sockets are closed (``after``), give this node's slots back and disconnect."""
        super().stopService()
        if self._beat.running:
            self._beat.stop()

        def leave(_: Any) -> Deferred[Any]:
            d = self.slots.forget()
            d.addErrback(lambda _: None)
            return d.addCallback(lambda _: self.redis.close())

        return (waiter_for(self._after) if self._after is not None else succeed(None)).addCallback(leave)

    def ping(self) -> Deferred[None]:
        """For ``/readyz``: fails when Redis does not answer, or while this node's subscriptions are down.

        Redis is back for a node once both its connections are: commands, and
        the subscriptions that carry revocations and the chat relay.
        """
        d = self.redis.ping()
        return d.addCallback(self._subscribed)

    def _subscribed(self, _: Any) -> None:
        if not self.redis.subscribing:
            raise ConnectionError(f"not subscribed to Redis at {self.redis.where}")
