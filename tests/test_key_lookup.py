"""A key missing from a node's copy is looked up in PostgreSQL before it is refused (issue 27, item 6).

Nodes refresh their copy of the keys every 0.5 s; a key made a moment ago
must still be let in, and bad keys must not turn into a query each.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator, TypeVar

import pytest
import pytest_twisted
import treq
from twisted.application.internet import TimerService
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from livetx.auth import pg_keys
from livetx.auth.pg_keys import PostgresKeyStore
from livetx.storage import key_store
from livetx.store.postgres import Database, prepare

from .support import connect, open_socket, replied
from .test_live_ws import OPEN_API
from .test_postgres import store_config

T = TypeVar("T")


class CountingDatabase(Database):
    """The real pool, counting the queries made through it."""

    calls = 0

    def run(self, work: Callable[[Any], T]) -> Deferred[T]:
        self.calls += 1
        return super().run(work)


def stop_refreshing(server: Any) -> None:
    """Freeze the node's copy of the keys: only a look-up can find a new key now."""
    for service in server.service:
        if isinstance(service, TimerService):
            service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_key_made_after_the_nodes_last_refresh_is_let_in(livetx: Any, openai: Any, postgres_url: str) -> None:
    openai.reply = "Hello."
    server = await livetx(store_config(openai.base_url, postgres_url))
    stop_refreshing(server)
    key = key_store(server.options["settings"], server.data_dir).create(["chat"])[1]  # as `livetx keys create`

    client = await connect(server.url(OPEN_API, api_key=key, username="kim"))
    assert replied(await client.turn("hi"))
    await client.close_and_wait()
    headers = {"X-API-Key": key}
    response = await treq.get(server.url("/api/v1/chat/sessions", scheme="http", username="kim"),
                              headers=headers, reactor=reactor)
    assert response.code == 200, await response.text()
    await treq.content(response)
    fresh = key_store(server.options["settings"], server.data_dir).create(["chat"])[1]  # a body waits too
    response = await treq.post(server.url("/api/v1/chat", scheme="http"), headers={"X-API-Key": fresh},
                               json={"username": "kim", "message": [{"type": "plain", "text": "hi"}]}, reactor=reactor)
    events = [json.loads(line[6:]) for line in (await response.text()).split("\n\n") if line.startswith("data: ")]
    assert response.code == 200 and events[-1]["type"] == "end"

    bad = await open_socket(server.url(OPEN_API, api_key="abk_never-made", username="kim"))
    await bad.closed.addTimeout(5, reactor)
    assert bad.close_reason == "Invalid API key"


@pytest.fixture
def counted(postgres_url: str) -> Iterator[tuple[PostgresKeyStore, CountingDatabase]]:
    """A node's key store on a real, empty database, counting its queries."""
    prepare(postgres_url)
    database = CountingDatabase(postgres_url, reactor)
    keys = PostgresKeyStore(postgres_url, database)
    keys.load()
    yield keys, database
    database.close()


@pytest_twisted.ensureDeferred
async def test_misses_are_remembered_until_the_keys_change(
    counted: tuple[PostgresKeyStore, CountingDatabase], postgres_url: str
) -> None:
    keys, database = counted
    waiting = keys.lookup("abk_bad")
    assert waiting is not None
    await waiting
    assert database.calls == 1 and keys.verify("abk_bad", "chat") is None
    assert keys.lookup("abk_bad") is None  # remembered: no second query
    assert database.calls == 1

    _, fresh = PostgresKeyStore(postgres_url).create(["chat"])
    await keys.refresh()  # the keys changed: every miss may exist now
    assert keys.verify(fresh, "chat") is not None and keys.lookup(fresh) is None
    again = keys.lookup("abk_bad")
    assert again is not None
    await again


@pytest_twisted.ensureDeferred
async def test_lookups_are_shared_and_bounded(counted: tuple[PostgresKeyStore, CountingDatabase]) -> None:
    keys, database = counted
    same = [keys.lookup("abk_one"), keys.lookup("abk_one")]
    others = [keys.lookup(f"abk_{n}") for n in range(pg_keys.MAX_LOOKUPS)]
    assert database.calls == pg_keys.MAX_LOOKUPS  # one per digest, and no more at once
    assert others[-1] is None  # past the bound: judged on the copy alone
    await gatherResults([d for d in same + others if d is not None])
    assert database.calls == pg_keys.MAX_LOOKUPS


def test_a_file_store_needs_no_lookup(tmp_path: Any) -> None:
    """The key file is re-read whenever it changes: a fresh key is always in the copy."""
    from livetx.auth.keys import KeyStore

    keys = KeyStore(tmp_path)
    assert keys.lookup("abk_anything") is None
    _, key = keys.create(["chat"])
    assert keys.verify(key, "chat") is not None
