"""A node is back on Redis promptly once Redis is, and ``/readyz`` says so (issue 27, item 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from livetx.cluster.redis import RECONNECT_EVERY, Redis

from .engines import RedisServer


async def answers(redis: Redis) -> bool:
    """Both connections are back: commands are answered, and subscriptions made."""
    try:
        await redis.ping()
    except Exception:
        return False
    return redis.subscribing


async def seconds_until(check: Any, limit: float) -> float:
    started = reactor.seconds()
    while not await check():
        assert reactor.seconds() - started < limit, f"not within {limit} s"
        await deferLater(reactor, 0.05, lambda: None)
    return reactor.seconds() - started


@pytest_twisted.ensureDeferred
async def test_commands_and_subscriptions_are_back_within_a_second_of_redis(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    redis = Redis(server.url, reactor)
    heard: list[str] = []
    try:
        redis.listen("news", heard.append)
        await seconds_until(lambda: answers(redis), 5)
        server.stop()
        # Down long enough for txredisapi's own backoff (1 s, x e, up to 10 s) to wait 7 s between tries.
        await deferLater(reactor, 4.0, lambda: None)
        assert not await answers(redis)
        server.start()
        # RECONNECT_EVERY plus slack; the backoff it replaces came back about 7 s after Redis did.
        took = await seconds_until(lambda: answers(redis), 5.0)
        assert took < RECONNECT_EVERY + 2, took
        await redis.publish("news", "back")
        await seconds_until(lambda: deferLater(reactor, 0, lambda: heard == ["back"]), 2)
    finally:
        await redis.close()
        server.stop()


@pytest_twisted.ensureDeferred
async def test_readyz_says_when_redis_is_back(livetx: Any, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    try:
        server = await livetx(f'[cluster]\nredis = "{redis.url}"\n')

        async def ready() -> bool:
            response = await treq.get(server.url("/readyz", scheme="http"), reactor=reactor)
            body = await response.json()
            return bool(body["checks"]["redis"]["ok"])

        await seconds_until(ready, 10)
        redis.stop()
        async def unready() -> bool:
            return not await ready()

        await seconds_until(unready, 10)
        redis.start()
        await seconds_until(ready, 10)  # probes are reused for 5 s: back within that and a reconnect
    finally:
        redis.stop()
