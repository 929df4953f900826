"""The resume journal's byte budget (issue 27.1): per session, per API key or user, in memory and in Redis.

A flood of large turns from one key's sockets, each opted into resume, once
filled Redis by hundreds of MB in seconds. Here the same flood is mounted on
the journals themselves (with a Clock) and against a running node whose
journal is in a real Redis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from livetx.auth.keys import KeyStore
from livetx.cluster.journal import RedisJournals
from livetx.cluster.redis import Redis
from livetx.errors import ErrorCode
from livetx.live.journal import Budget, MemoryJournals

from .engines import RedisServer
from .support import RunningServer, connect
from .test_live_ws import OPEN_API
from .test_resume import resumed

SMALL = Budget(frames=2000, session_bytes=40_000, quota_bytes=100_000, frame_bytes=10_000)


def chunk(n: int, size: int = 9_000) -> dict[str, Any]:
    """A frame of about ``size`` bytes as JSON, under the per-frame cap."""
    return {"t": "bot_delta_chunk", "data": {"text": f"{n:06d}" + "x" * (size - 60)}}


def kept_bytes(journals: MemoryJournals) -> int:
    return sum(size for log in journals._logs.values() for _, _, size in log.entries)


def test_a_session_keeps_its_byte_budget_and_a_resume_past_the_dropped_frames_expires() -> None:
    journals = MemoryJournals(Clock(), budget=SMALL)
    writer = journals.open("ann")
    for n in range(20):
        writer.append(chunk(n))
    assert kept_bytes(journals) <= SMALL.session_bytes
    _, failure = resumed(journals, writer.session_id, "ann", 0)
    assert failure.value.code == ErrorCode.RESUME_EXPIRED  # the oldest went first
    got, _ = resumed(journals, writer.session_id, "ann", 16)
    assert [f["seq"] for f in got] == [17, 18, 19, 20]


def test_a_frame_past_the_cap_is_kept_as_a_marker_but_followers_get_it_whole() -> None:
    journals = MemoryJournals(Clock(), budget=SMALL)
    writer = journals.open("ann")
    writer.append({"t": "session_updated", "data": {}})
    live, _ = resumed(journals, writer.session_id, "ann", 1)
    big = {"t": "user_msg", "data": {"text": "y" * 1_000_000}}
    writer.append(big)
    writer.append({"type": "plain", "data": "z" * 50_000})  # a chat frame: its kind is under "type"
    assert live[0] == {**big, "seq": 2}
    got, _ = resumed(journals, writer.session_id, "ann", 1)
    assert got[0] == {"t": "omitted", "seq": 2, "frame": "user_msg", "bytes": got[0]["bytes"]}
    assert got[0]["bytes"] > 1_000_000
    assert got[1]["type"] == "omitted" and got[1]["frame"] == "plain" and got[1]["seq"] == 3
    assert kept_bytes(journals) < 1_000


def test_one_keys_sessions_share_one_budget_and_other_keys_keep_theirs() -> None:
    clock = Clock()
    journals = MemoryJournals(clock, budget=SMALL)
    bystander = journals.open("bob")
    bystander.append(chunk(0))
    flood = [journals.open(f"user{n}", quota="key-1") for n in range(8)]  # one API key naming 8 users
    for round_ in range(4):
        for n, writer in enumerate(flood):
            clock.advance(0.01)
            writer.append(chunk(round_ * 8 + n))
    held = {writer.session_id: [frame["seq"] for _, frame, _ in journals._logs[writer.session_id].entries]
            for writer in flood}
    assert sum(size for writer in flood for _, _, size in journals._logs[writer.session_id].entries) \
        <= SMALL.quota_bytes
    # The oldest frames of the key went first, whichever session they were in: the last 11 are kept.
    assert [held[writer.session_id] for writer in flood] == [[4]] * 5 + [[3, 4]] * 3
    assert resumed(journals, flood[0].session_id, "user0", 0)[1].value.code == ErrorCode.RESUME_EXPIRED
    assert [f["seq"] for f in resumed(journals, bystander.session_id, "bob", 0)[0]] == [1]


def test_sessions_forgotten_after_their_window_give_their_quota_back() -> None:
    clock = Clock()
    journals = MemoryJournals(clock, seconds=120, budget=SMALL)
    old = journals.open("ann")
    for n in range(4):
        old.append(chunk(n))
    old.release()
    clock.advance(200)
    new = journals.open("ann")
    for n in range(10):
        new.append(chunk(n))
    assert len(journals._logs[new.session_id].entries) == 4  # the session's own budget, not the quota's
    assert journals._quota_bytes["ann"] == kept_bytes(journals)


async def journal_bytes(redis: Redis) -> int:
    """What the journal's keys take in Redis, as Redis counts it."""
    total, cursor = 0, "0"
    while True:
        cursor, keys = await redis.command("SCAN", cursor, "MATCH", "livetx:journal*", "COUNT", 1000)
        for key in keys:
            total += int(await redis.command("MEMORY", "USAGE", key) or 0)
        if str(cursor) == "0":
            return total


@pytest_twisted.ensureDeferred
async def test_redis_journals_keep_the_same_budgets(redis_server: RedisServer) -> None:
    redis, other = Redis(redis_server.url, reactor), Redis(redis_server.url, reactor)
    try:
        journals = RedisJournals(redis, reactor, "node-1", budget=SMALL)
        flood = [journals.open(f"user{n}", quota="key-1") for n in range(8)]
        for round_ in range(6):
            for n, writer in enumerate(flood):
                writer.append(chunk(round_ * 8 + n))
        flood[-1].append({"t": "user_msg", "data": {"text": "y" * 1_000_000}})
        await redis.ping()  # after the writes, on the same connection
        assert await journal_bytes(redis) < 2 * SMALL.quota_bytes
        assert int(await redis.command("HGET", "livetx:journal-quota:key-1:counts", "bytes")) <= SMALL.quota_bytes

        reader = RedisJournals(other, reactor, "node-2", budget=SMALL)
        try:
            await reader.resume(flood[0].session_id, "user0", 0, lambda frame: None)
            raise AssertionError("resumed past dropped frames")
        except Exception as e:
            assert getattr(e, "code", None) == ErrorCode.RESUME_EXPIRED
        got: list[dict[str, Any]] = []
        tail = await reader.resume(flood[-1].session_id, "user7", 5, got.append)
        tail.cancel()
        assert [f["seq"] for f in got] == [6, 7]
        assert got[-1] == {"t": "omitted", "seq": 7, "frame": "user_msg", "bytes": got[-1]["bytes"]}
    finally:
        await redis.close()
        await other.close()


@pytest_twisted.ensureDeferred
async def test_a_flood_of_large_turns_from_one_key_keeps_redis_within_the_budget(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The attack of issue 27.1, scaled down: 8 sockets of one key, large text turns, ``?resume=1``."""
    config = ('[llm]\nprovider = "echo"\n\n[tts]\nprovider = "none"\n\n'
              f'[cluster]\nredis = "{redis_server.url}"\nresume_session_bytes = 200000\n'
              'resume_quota_bytes = 500000\nresume_frame_bytes = 100000\n')
    server = await RunningServer(tmp_path, config).start()
    redis = Redis(redis_server.url, reactor)
    try:
        _, key = KeyStore(server.data_dir).create(["chat"])
        sockets = [await connect(server.url(OPEN_API, api_key=key, username=f"user{n}", resume="1"))
                   for n in range(8)]
        for client in sockets:
            await client.until("session_updated")
        for round_ in range(3):
            for n, client in enumerate(sockets):
                client.send({"t": "text_input", "text": " ".join(f"{round_}{n}{i}" + "w" * 4000 for i in range(60))})
            for client in sockets:
                await client.until("end", timeout=30)
        await redis.ping()
        assert await journal_bytes(redis) < 2 * 500_000  # 8 x 3 turns of 240 kB, echoed, would be 11 MB
        for client in sockets:
            await client.close_and_wait()
    finally:
        await redis.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_discarded_journal_leaves_redis_and_its_quota(redis_server: RedisServer) -> None:
    """The fresh journal of a ``?resume=1`` socket that resumed another session instead (issue 27.9)."""
    redis = Redis(redis_server.url, reactor)
    try:
        journals = RedisJournals(redis, reactor, "node-1", budget=SMALL)
        kept, fresh = journals.open("ann"), journals.open("ann")
        kept.append(chunk(0))
        fresh.append({"t": "session_updated", "data": {"resume": True}})
        fresh.discard()
        await redis.ping()
        assert await redis.command("EXISTS", f"livetx:journal:{fresh.session_id}") == 0
        assert int(await redis.command("HGET", "livetx:journal-quota:ann:counts", "bytes")) == \
            len(json.dumps({**chunk(0), "seq": 1}, separators=(",", ":")))
    finally:
        await redis.close()
