"""Redeemed login links, recorded in Redis: a link signs in once across every process and machine.

One key per link (``SET … NX PX``): the first process to set it redeems the
link, any other is refused, and Redis drops the key when the link would
have expired anyway, so nothing needs sweeping. When Redis does not answer
the link is refused (503), not let in: a login link is a convenience, and
pasting a token still works.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from livetx.cluster.redis import Redis


class RedisUsedLinks:
    """:class:`livetx.auth.login_links.UsedLinks` in Redis."""

    def __init__(self, redis: Redis, prefix: str = "livetx:") -> None:
        self._redis = redis
        self._prefix = prefix

    def claim(self, link_id: str, expires: float, now: float) -> Deferred[bool]:
        milliseconds = max(1, int((expires - now) * 1000))
        d = self._redis.command("SET", f"{self._prefix}login-link:{link_id}", "1", "NX", "PX", milliseconds)
        return d.addCallback(_set)


def _set(reply: Any) -> bool:
    """``SET … NX`` answers OK when it set the key, nothing when the key was there."""
    return reply is not None
