"""How long a turn waits to learn that PostgreSQL is away (issue 27, item 12).

docs/deployment.md says: up to 3 s (the pool's wait for a connection).
A unit queued behind a batch that was already waiting used to wait a full
wait of its own afterwards, 6 s and more for a turn behind another.
"""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList

from livetx.errors import StoreUnavailable
from livetx.store.batches import GroupCommit, Unit
from livetx.store.postgres import POOL_TIMEOUT

from .services import PostgreSQL
from .support import connect
from .test_live_ws import UNIFIED
from .test_postgres import store_config


def commits() -> tuple[GroupCommit, list[tuple[list[Unit], Deferred[Any]]]]:
    batches: list[tuple[list[Unit], Deferred[Any]]] = []

    def run(batch: list[Unit]) -> Deferred[Any]:
        batches.append((batch, Deferred()))
        return batches[-1][1]

    return GroupCommit(run), batches


def test_units_queued_behind_an_absent_database_fail_with_its_batch() -> None:
    group, batches = commits()
    results: list[Any] = []
    for _ in range(3):  # the first runs; two queue behind it
        group.unit(lambda cursor: None).addErrback(results.append)
    batches[0][1].errback(StoreUnavailable("postgresql://db:5432/livetx is unavailable: refused"))
    assert len(batches) == 1  # nothing more asked of the absent database
    assert [r.check(StoreUnavailable) for r in results] == [StoreUnavailable] * 3


def test_other_failures_leave_the_queue_to_run() -> None:
    group, batches = commits()
    failed: list[Any] = []
    group.unit(lambda cursor: None).addErrback(failed.append)
    group.unit(lambda cursor: None)
    batches[0][1].errback(OSError("disk gone"))
    assert len(failed) == 1 and len(batches) == 2  # the queued unit gets its own try


@pytest_twisted.ensureDeferred
async def test_turns_queued_together_learn_within_one_wait(livetx: Any, openai: Any) -> None:
    database = PostgreSQL().start()
    try:
        server = await livetx(store_config(openai.base_url, database.url()))
        chats = [await connect(server.url(UNIFIED, token=server.token(name))) for name in ("kim", "lee", "max")]
        database.stop(remove=False)
        started = time.monotonic()
        for chat in chats:
            chat.send({"ct": "chat", "t": "send", "message": "keep this?"})
        ended = await DeferredList([Deferred.fromCoroutine(chat.until("end", timeout=20)) for chat in chats])
        took = time.monotonic() - started
        for ok, events in ended:
            assert ok and [f["code"] for f in events if f.get("t") == "error"] == ["STORE_UNAVAILABLE"]
        # One pool wait (3 s) plus slack; a wait per turn ahead would be 6 s and 9 s.
        assert took < 2 * POOL_TIMEOUT - 1, took
    finally:
        database.stop()


def test_the_documented_wait_is_the_pools() -> None:
    from pathlib import Path

    deployment = (Path(__file__).resolve().parent.parent / "docs" / "deployment.md").read_text()
    assert f"after up to {POOL_TIMEOUT:g} s: an `error` event with code `STORE_UNAVAILABLE`" in deployment
