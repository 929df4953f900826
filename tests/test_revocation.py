"""Revoking an API key closes the sockets it opened (issues 13.8, 27.7, 27.13)."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import Clock

from livetx.auth.keys import REVOKED, KeyStore
from livetx.auth.revocation import KeyRevocations

from .support import connect, replied
from .test_live_ws import LIVE, OPEN_API


class Keys:
    """What the watcher reads of a key store: the revoked ids and the live ones."""

    def __init__(self, *active: str) -> None:
        self.active = set(active)
        self.revoked: set[str] = set()

    def revoke(self, key_id: str) -> None:
        self.active.discard(key_id)
        self.revoked.add(key_id)

    def watcher(self, heard: list[frozenset[str]]) -> KeyRevocations:
        revocations = KeyRevocations(lambda: frozenset(self.revoked), lambda: frozenset(self.active),
                                     Clock(), interval=0.5)
        revocations.subscribe(heard.append)
        return revocations


def test_listeners_hear_revoked_and_deleted_ids_within_one_interval() -> None:
    keys, heard = Keys("a", "b", "c"), list[frozenset[str]]()
    keys.revoked.add("old")  # revoked before the server started: nobody to tell
    revocations = keys.watcher(heard)
    clock = revocations._loop.clock
    revocations.startService()
    keys.revoke("b")
    clock.advance(0.5)
    assert heard == [frozenset({"b"})]
    keys.active.add("d")  # a new key is no news
    clock.advance(0.5)
    keys.revoke("a")
    keys.active.discard("c")  # deleted from the store, not revoked
    clock.advance(0.49)
    assert heard == [frozenset({"b"})]  # not before the next look
    clock.advance(0.01)
    assert heard == [frozenset({"b"}), frozenset({"a", "c"})]
    clock.advance(0.5)
    assert len(heard) == 2  # each id once
    revocations.stopService()
    revocations.publish(frozenset({"x"}))  # what another node's signal would do
    assert heard[-1] == frozenset({"x"})


def test_a_key_made_and_revoked_between_two_looks_is_heard() -> None:
    """Never seen active: a diff of active sets would miss it, its revoked record does not (27.7)."""
    keys, heard = Keys("a"), list[frozenset[str]]()
    revocations = keys.watcher(heard)
    revocations.startService()
    keys.active.add("fresh")
    keys.revoke("fresh")
    revocations._loop.clock.advance(0.5)
    assert heard == [frozenset({"fresh"})]
    revocations.stopService()


@pytest_twisted.ensureDeferred
async def test_revoking_a_key_closes_its_sockets(livetx: Any) -> None:
    server = await livetx()
    store = KeyStore(server.data_dir)
    record, key = store.create(["chat"])
    _, other = store.create(["chat"])
    live = await connect(server.url(OPEN_API, username="d1", api_key=key))
    chat = await connect(server.url(OPEN_API, username="d2", api_key=key, ct="chat"))
    bystander = await connect(server.url(OPEN_API, username="d3", api_key=other))
    browser = await connect(server.url(LIVE, token=server.token()))
    assert store.revoke(record.id)  # at once: the watcher may never have seen the key live (27.7)
    for client in (live, chat):
        # The watcher looks every 0.5 s (held by the Clock tests above); unrevoked, the socket stays open.
        await client.closed.addTimeout(3, reactor)
        assert (client.close_code, client.close_reason) == (1008, "API key revoked")
        assert [(f["t"], f["code"]) for f in client.frames] == [("error", "UNAUTHORIZED")]
    for client in (bystander, browser):
        assert replied(await client.turn("still here"))
        await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_a_revoked_key_is_refused_as_revoked_everywhere(livetx: Any) -> None:
    """The same reason at the handshake and over HTTP as on its closed sockets (27.13)."""
    server = await livetx()
    store = KeyStore(server.data_dir)
    record, key = store.create(["chat"])
    assert store.revoke(record.id)
    client = await connect(server.url(OPEN_API, username="d1", api_key=key))
    await client.closed.addTimeout(3, reactor)
    assert (client.close_code, client.close_reason) == (1008, REVOKED)
    assert [(f["t"], f["code"], f["data"]) for f in client.frames] == [("error", "UNAUTHORIZED", REVOKED)]
    response = await treq.get(server.url("/api/v1/chat/sessions", scheme="http", username="d1"),
                              headers={"Authorization": f"Bearer {key}"})
    assert response.code == 401 and (await response.json())["message"] == REVOKED
    unknown = await connect(server.url(OPEN_API, username="d1", api_key="abk_unknown"))
    await unknown.closed.addTimeout(3, reactor)
    assert unknown.close_reason == "Invalid API key"
