"""Chat events across processes: one Redis channel per chat session.

The process running a turn publishes each event on the session's channel;
a process with sockets bound to that session subscribes while it has any,
and hands what it hears to them. Each message names the node that sent it,
so a node never delivers its own events twice. One connection carries all
of a node's publishes, so a turn's events arrive in the order they were sent.

Publishing costs a Redis command per event, so a node publishes only the
sessions some other node follows: a node binding a session announces it on
a channel every node listens to (and withdraws it when its last socket
unbinds); a node that starts asks the others to announce theirs again.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.defer import Deferred

from livetx.cluster.redis import Redis, warn_unreachable

Deliver = Callable[[dict[str, Any]], None]


class ChatRelay:
    """What :class:`livetx.chat.service.ChatService` needs to reach other processes."""

    def __init__(self, redis: Redis, node: str, prefix: str = "livetx:") -> None:
        self._redis = redis
        self._node = node
        self._prefix = prefix
        self._binds = f"{prefix}binds"
        self._handlers: dict[str, Callable[[str], None]] = {}
        #: Channels other nodes follow, and which nodes.
        self._followed: dict[str, set[str]] = {}
        redis.listen(self._binds, self._heard_bind)
        redis.when_subscribed(self._joined)

    def _joined(self) -> None:
        """Connected (again): ask the others what they follow, and tell them what this node does."""
        self._announce("?", "")
        for channel in self._handlers:
            self._announce("+", channel)

    def _channel(self, key: tuple[str, str]) -> str:
        owner, session_id = key  # the owner's length first: a username may contain ':'
        return f"{self._prefix}chat:{len(owner)}:{owner}:{session_id}"

    def _announce(self, sign: str, channel: str) -> Deferred[Any]:
        d = self._redis.publish(self._binds, f"{sign}{self._node} {channel}")
        d.addErrback(warn_unreachable, "announce a bound chat session")
        return d

    def _heard_bind(self, message: str) -> None:
        sign, (node, _, channel) = message[0], message[1:].partition(" ")
        if node == self._node:
            return
        if sign == "?":  # a node (re)joined: tell it what this one follows
            for followed in self._handlers:
                self._announce("+", followed)
        elif sign == "+":
            self._followed.setdefault(channel, set()).add(node)
        elif channel in self._followed:
            self._followed[channel].discard(node)
            if not self._followed[channel]:
                del self._followed[channel]

    def publish(self, key: tuple[str, str], event: dict[str, Any]) -> None:
        channel = self._channel(key)
        if channel not in self._followed:
            return
        message = json.dumps({"node": self._node, "event": event}, separators=(",", ":"))
        self._redis.publish(channel, message).addErrback(warn_unreachable, "relay a chat event")

    def subscribe(self, key: tuple[str, str], deliver: Deliver) -> Deferred[Any]:
        """Hand ``deliver`` the session's events from other nodes, until :meth:`unsubscribe`.

        Fires once the other nodes have been told (they publish from then on).
        """

        def heard(message: str) -> None:
            decoded = json.loads(message)
            if decoded.get("node") != self._node:
                deliver(decoded["event"])

        channel = self._channel(key)
        self._handlers[channel] = heard
        d = self._redis.subscribe(channel, heard)
        return d.addCallback(lambda _: self._announce("+", channel))

    def unsubscribe(self, key: tuple[str, str]) -> None:
        channel = self._channel(key)
        heard = self._handlers.pop(channel, None)
        if heard is not None:
            self._redis.unsubscribe(channel, heard)
            self._announce("-", channel)
