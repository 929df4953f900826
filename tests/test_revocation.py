"""Revoking an API key closes the sockets it opened (issue 13.8)."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from livetx.auth.keys import KeyStore
from livetx.auth.revocation import KeyRevocations

from .support import connect, replied
from .test_live_ws import LIVE, OPEN_API


def test_listeners_hear_the_ids_that_left_the_active_set() -> None:
    clock = Clock()
    active = {"a", "b", "c"}
    heard: list[frozenset[str]] = []
    revocations = KeyRevocations(lambda: frozenset(active), clock, interval=0.5)
    revocations.subscribe(heard.append)
    revocations.startService()
    active.discard("b")
    clock.advance(0.5)
    active.add("d")  # a new key is no news
    clock.advance(0.5)
    active.clear()
    clock.advance(0.5)
    assert heard == [frozenset({"b"}), frozenset({"a", "c", "d"})]
    revocations.stopService()
    revocations.publish(frozenset({"x"}))  # what another node's signal would do
    assert heard[-1] == frozenset({"x"})


@pytest_twisted.ensureDeferred
async def test_revoking_a_key_closes_its_sockets_within_a_second(livetx: Any) -> None:
    server = await livetx()
    store = KeyStore(server.data_dir)
    record, key = store.create(["chat"])
    _, other = store.create(["chat"])
    live = await connect(server.url(OPEN_API, username="d1", api_key=key))
    chat = await connect(server.url(OPEN_API, username="d2", api_key=key, ct="chat"))
    bystander = await connect(server.url(OPEN_API, username="d3", api_key=other))
    browser = await connect(server.url(LIVE, token=server.token()))
    await deferLater(reactor, 0.6, lambda: None)  # the watcher has seen the key
    revoked_at = reactor.seconds()
    assert store.revoke(record.id)
    for client in (live, chat):
        await client.closed.addTimeout(2, reactor)
        assert reactor.seconds() - revoked_at < 1.0
        assert (client.close_code, client.close_reason) == (1008, "API key revoked")
        assert [(f["t"], f["code"]) for f in client.frames] == [("error", "UNAUTHORIZED")]
    for client in (bystander, browser):
        assert replied(await client.turn("still here"))
        await client.close_and_wait()
