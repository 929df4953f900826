"""``[cluster] redis``: limits, bound chat sessions, revocation and readiness across processes.

Every test runs against a real redis-server on a loopback port. Two servers
in one test process stand for two nodes: each has its own Redis connections
and node id, exactly as separate processes would; they share one data dir
(SQLite) where the store must be shared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor

from livetx.auth.keys import KeyStore
from livetx.cli import main as cli
from livetx.cluster.journal import RedisJournals
from livetx.cluster.limits import ConnectionSlots, SharedFailedAuth
from livetx.cluster.redis import Redis
from livetx.cluster.relay import ChatRelay

from .engines import RedisServer
from .support import RunningServer, connect, open_socket
from .test_chat import send
from .test_live_ws import LIVE, OPEN_API, eventually, openai_config
from .test_resume import REPLY, SLOW_ECHO, seqs, settle, start_turn


@pytest_twisted.ensureDeferred
async def test_slots_hold_across_nodes_and_a_dead_node_frees_its_own(redis_server: RedisServer) -> None:
    one, two = Redis(redis_server.url, reactor), Redis(redis_server.url, reactor)
    a, b = ConnectionSlots(one, "node-a"), ConnectionSlots(two, "node-b")
    try:
        await a.heartbeat()
        await b.heartbeat()
        user = ("", "alice")
        assert await a.acquire(user, None, 2, 0) is None
        assert await b.acquire(user, None, 2, 0) is None
        assert await a.acquire(user, None, 2, 0) == "Too many connections for this user"
        await b.release(user, None)
        assert await a.acquire(user, None, 2, 0) is None
        # Per key: another username on the same key still counts against the key.
        assert await a.acquire(("k1", "bob"), "k1", 5, 1) is None
        assert await b.acquire(("k1", "carol"), "k1", 5, 1) == "Too many connections for this API key"
        # Node a dies (its heartbeat key goes): its slots no longer count.
        await a.forget()
        assert await b.acquire(user, None, 2, 0) is None
        assert await b.acquire(("k1", "carol"), "k1", 5, 1) is None
    finally:
        await one.close()
        await two.close()


@pytest_twisted.ensureDeferred
async def test_failed_logins_count_across_nodes(redis_server: RedisServer) -> None:
    one, two = Redis(redis_server.url, reactor), Redis(redis_server.url, reactor)
    try:
        a = SharedFailedAuth(3, reactor, one)
        b = SharedFailedAuth(3, reactor, two)
        await settle(0.2)  # both subscribed
        for failures in (a, b, a):
            failures.failed("10.0.0.9")
        await eventually(lambda: b.blocked("10.0.0.9") and a.blocked("10.0.0.9"))
        assert not b.blocked("10.0.0.10")
    finally:
        await one.close()
        await two.close()


@pytest_twisted.ensureDeferred
async def test_redis_gone_fails_commands_quickly(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    redis = Redis(server.url, reactor, timeout=0.3)
    try:
        assert await redis.ping() == "PONG"
        server.stop()
        failed = []
        await redis.ping().addErrback(failed.append)
        assert failed
    finally:
        await redis.close()


def cluster_config(redis_url: str, openai_url: str, extra: str = "") -> str:
    return openai_config(openai_url, tts=False) + f'\n[cluster]\nredis = "{redis_url}"\n' + extra


async def two_nodes(tmp_path: Path, config: str) -> tuple[RunningServer, RunningServer]:
    data = tmp_path / "shared"
    return await RunningServer(data, config).start(), await RunningServer(data, config).start()


@pytest_twisted.ensureDeferred
async def test_bind_on_one_node_sees_a_turn_on_the_other(
    tmp_path: Path, redis_server: RedisServer, openai: Any
) -> None:
    openai.reply = "Across nodes."
    one, two = await two_nodes(tmp_path, cluster_config(redis_server.url, openai.base_url))
    try:
        key = KeyStore(one.data_dir).create(["chat"])[1]
        sender = await connect(one.url(OPEN_API, api_key=key, username="ann", ct="chat"))
        send(sender, "first")
        session_id = (await sender.until("end"))[0]["session_id"]
        watcher = await connect(two.url(OPEN_API, api_key=key, username="ann", ct="chat"))
        watcher.send({"ct": "chat", "t": "bind", "session_id": session_id})
        await watcher.until("session_bound")
        await settle(0.1)
        send(sender, "second", session_id=session_id)
        seen = await watcher.until("end")
        assert "".join(f["data"] for f in seen if f.get("type") == "plain") == "Across nodes."
        assert [f.get("type") for f in seen][-2:] == ["message_saved", "end"]
        own = await sender.until("end")
        assert sum(1 for f in own if f.get("type") == "end") == 1  # not echoed back to its sender
        for client in (sender, watcher):
            await client.close_and_wait()
    finally:
        await one.stop()
        await two.stop()


@pytest_twisted.ensureDeferred
async def test_per_user_limit_counts_sockets_on_both_nodes_and_revocation_closes_them(
    tmp_path: Path, redis_server: RedisServer, openai: Any
) -> None:
    config = cluster_config(redis_server.url, openai.base_url, "\n[server]\nmax_connections_per_user = 2\n")
    config_path = tmp_path / "livetx.toml"
    one, two = await two_nodes(tmp_path, config)
    try:
        record, key = KeyStore(one.data_dir).create(["chat"])
        a = await connect(one.url(OPEN_API, api_key=key, username="ann"))
        b = await connect(two.url(OPEN_API, api_key=key, username="ann"))
        third = await open_socket(one.url(OPEN_API, api_key=key, username="ann"))
        await third.wait(lambda: third.close_code is not None)
        assert third.close_code == 1008 and third.close_reason == "Too many connections for this user"
        await b.close_and_wait()
        await eventually(lambda: len(two.service.getServiceNamed("connections")) == 0)
        await settle(0.1)
        c = await connect(one.url(OPEN_API, api_key=key, username="ann"))

        d = await connect(two.url(OPEN_API, api_key=key, username="bob"))
        assert cli(["keys", "revoke", "--data-dir", str(one.data_dir), "--config", str(config_path),
                    record.id]) == 0
        for client in (a, c, d):  # on both nodes
            await client.wait(lambda: client.close_code is not None)
            assert (client.close_code, client.close_reason) == (1008, "API key revoked")
    finally:
        await one.stop()
        await two.stop()


@pytest_twisted.ensureDeferred
async def test_without_redis_a_node_degrades_but_serves(tmp_path: Path, openai: Any) -> None:
    redis = RedisServer(tmp_path)
    server = await RunningServer(tmp_path / "data", cluster_config(redis.url, openai.base_url)).start()
    try:
        response = await treq.get(server.url("/readyz", scheme="http"), reactor=reactor)
        body = json.loads(await treq.content(response))
        assert response.code == 200 and body["checks"]["redis"] == {"ok": True}
        redis.stop()
        await settle(5.1)  # the route reuses its answer for READY_CACHE_SECONDS
        response = await treq.get(server.url("/readyz", scheme="http"), reactor=reactor)
        body = json.loads(await treq.content(response))
        assert response.code == 200 and body["status"] == "degraded"  # turns are still served
        assert body["checks"]["redis"]["ok"] is False and body["checks"]["redis"]["error"]
        client = await connect(server.url(LIVE, token=server.token("ann")))  # limits: this process's own
        assert [f["t"] for f in await client.turn("still there?")][-1] == "end"
        await client.close_and_wait()
    finally:
        await server.stop()
        redis.stop()


@pytest_twisted.ensureDeferred
async def test_a_turn_dropped_on_one_node_is_resumed_and_interrupted_from_the_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    config = SLOW_ECHO + f'\n[cluster]\nredis = "{redis_server.url}"\n'
    one, two = await two_nodes(tmp_path, config)
    try:
        token = one.token("ann")
        _, session_id, before = await start_turn(one, token)
        stranger = await connect(two.url(LIVE, token=one.token("eve")))
        stranger.send({"t": "resume", "session_id": session_id, "seq": 0})
        assert (await stranger.next())["code"] == "FORBIDDEN"

        after = await connect(two.url(LIVE, token=token))
        after.send({"t": "resume", "session_id": session_id, "seq": before[-1]["seq"]})
        await after.wait(lambda: any(f["t"] == "bot_delta_chunk" for f in after.frames))
        after.send({"t": "interrupt"})  # runs on node one
        rest = await after.until("stop_play")
        numbers = seqs(before) + seqs(rest)
        assert numbers == list(range(1, len(numbers) + 1))
        delivered = "".join(f["data"]["text"] for f in before + rest if f["t"] == "bot_delta_chunk")
        assert 0 < len(delivered.split()) < len(REPLY.split())

        await settle(0.2)  # node two takes the journal over once node one lets go
        more = await after.turn("again")
        assert seqs(more)[0] > numbers[-1]
        for client in (after, stranger):
            await client.close_and_wait()
    finally:
        await one.stop()
        await two.stop()


@pytest_twisted.ensureDeferred
async def test_a_resumed_turn_whose_process_died_ends_as_lost(redis_server: RedisServer) -> None:
    one, two = Redis(redis_server.url, reactor), Redis(redis_server.url, reactor)
    try:
        writer = RedisJournals(one, reactor, "killed-node").open("ann")  # its node has no heartbeat
        for n in range(3):
            writer.append({"t": "bot_delta_chunk", "n": n})
        await one.ping()  # after the writes, on the same connection
        got: list[dict[str, Any]] = []
        tail = await RedisJournals(two, reactor, "survivor").resume(writer.session_id, "ann", 1, got.append)
        assert [f["seq"] for f in got] == [2, 3]
        assert await tail.done.addTimeout(5, reactor) == 3 and tail.lost
    finally:
        await one.close()
        await two.close()


@pytest_twisted.ensureDeferred
async def test_chat_events_are_published_only_while_another_node_follows(redis_server: RedisServer) -> None:
    one, two, spy = (Redis(redis_server.url, reactor) for _ in range(3))
    try:
        a, b = ChatRelay(one, "node-a"), ChatRelay(two, "node-b")
        key = ("ann", "s1")
        published: list[str] = []
        spy.listen("livetx:chat:3:ann:s1", published.append)
        await settle(0.3)  # every connection is up, the relays have joined
        a.publish(key, {"type": "plain", "data": "nobody follows"})
        got: list[dict[str, Any]] = []
        await b.subscribe(key, got.append)
        await eventually(lambda: bool(a._followed))
        a.publish(key, {"type": "plain", "data": "to b"})
        b.publish(key, {"type": "plain", "data": "b's own"})  # nobody else follows: not sent
        await eventually(lambda: got == [{"type": "plain", "data": "to b"}])
        b.unsubscribe(key)
        await eventually(lambda: not a._followed)
        a.publish(key, {"type": "plain", "data": "nobody again"})
        await one.ping()
        await spy.ping()
        assert [json.loads(m)["event"]["data"] for m in published] == ["to b"]
    finally:
        for redis in (one, two, spy):
            await redis.close()
