"""``POST /api/v1/chat`` streams to a client that may not read (issue 13.2)."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import deferLater

from livetx.testing.openai_server import FakeOpenAI

from .test_bodies import RawHTTP, post
from .test_http_api import API
from .test_live_ws import eventually, openai_config


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_cut_off_and_the_turn_still_stored(
    livetx: Any, openai: FakeOpenAI
) -> None:
    reply = "x" * (24 * 1024 * 1024)  # more than every socket buffer on the way can hold
    openai.reply = reply
    openai.tokenize = lambda text: [text[i : i + 65536] for i in range(0, len(text), 65536)]
    server = await livetx(openai_config(openai.base_url, tts=False) + "[server]\nmax_send_buffer_bytes = 262144\n")
    api = API(server)
    body = b'{"username": "ann", "session_id": "slow-reader", "message": "talk a lot"}'
    reader = RawHTTP(post("/api/v1/chat", f"X-API-Key: {api.key}\r\n", len(body)) + body)
    reactor.connectTCP("127.0.0.1", server.port, ClientFactory.forProtocol(lambda: reader))
    await eventually(lambda: reader.transport is not None and bool(reader.received))
    reader.transport.pauseProducing()  # the client stops reading its socket

    async def stored() -> list[Any]:
        code, history = await api.call("GET", "/api/v1/chat/sessions/slow-reader/messages?username=ann")
        return history.get("messages", []) if code == 200 else []

    messages: list[Any] = []
    for _ in range(200):
        messages = await stored()
        if len(messages) == 2:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert len(messages[1]["message"][0]["text"]) == len(reply)  # the whole turn, though nobody read it
    reader.transport.resumeProducing()
    await reader.lost.addTimeout(10, reactor)
    assert b'"type": "end"' not in reader.received  # cut off, not delivered in full
    assert len(reader.received) < len(reply) // 2

