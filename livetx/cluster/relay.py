"""Chat events across processes: one Redis channel per chat session.

The process running a turn publishes each event on the session's channel;
a process with sockets bound to that session subscribes while it has any,
and hands what it hears to them. Each message names the node that sent it,
so a node never delivers its own events twice. One connection carries all
of a node's publishes, so a turn's events arrive in the order they were sent.
"""

from __future__ import annotations

import json
from typing import Any, Callable


from livetx.cluster.redis import Redis, warn_unreachable

Deliver = Callable[[dict[str, Any]], None]


class ChatRelay:
    """What :class:`livetx.chat.service.ChatService` needs to reach other processes."""

    def __init__(self, redis: Redis, node: str, prefix: str = "livetx:") -> None:
        self._redis = redis
        self._node = node
        self._prefix = prefix
        self._handlers: dict[tuple[str, str], Callable[[str], None]] = {}

    def _channel(self, key: tuple[str, str]) -> str:
        owner, session_id = key  # the owner's length first: a username may contain ':'
        return f"{self._prefix}chat:{len(owner)}:{owner}:{session_id}"

    def publish(self, key: tuple[str, str], event: dict[str, Any]) -> None:
        message = json.dumps({"node": self._node, "event": event}, separators=(",", ":"))
        self._redis.publish(self._channel(key), message).addErrback(warn_unreachable, "relay a chat event")

    def subscribe(self, key: tuple[str, str], deliver: Deliver) -> None:
        """Hand ``deliver`` the session's events from other nodes, until :meth:`unsubscribe`."""

        def heard(message: str) -> None:
            decoded = json.loads(message)
            if decoded.get("node") != self._node:
                deliver(decoded["event"])

        self._handlers[key] = heard
        self._redis.listen(self._channel(key), heard)

    def unsubscribe(self, key: tuple[str, str]) -> None:
        heard = self._handlers.pop(key, None)
        if heard is not None:
            self._redis.unsubscribe(self._channel(key), heard)
