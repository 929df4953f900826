"""``POST /api/v1/chat`` streams to a client that may not read (issue 13.2)."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path
from typing import Any, cast

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from livetx.chat.service import ChatRequest, ChatService
from livetx.domain import Engines
from livetx.providers.echo import EchoChat
from livetx.store.sqlite import SQLiteStore
from livetx.testing.openai_server import FakeOpenAI
from livetx.web.http_api import EventStream

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



class Reader(DummyRequest):
    """A request whose transport keeps what is written: the bytes the server holds for a client that does not read."""

    producer: IPushProducer | None = None

    def __init__(self) -> None:
        super().__init__([b"api", b"v1", b"chat"])
        self.transport = StringTransport()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def buffered(self) -> int:
        return sum(map(len, self.written))

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(chunk[len(b"data: "):]) for chunk in self.written]


@pytest_twisted.ensureDeferred
async def test_a_backed_up_stream_pauses_the_turn_and_lets_go_when_the_client_leaves(tmp_path: Path) -> None:
    clock = Clock()
    store = SQLiteStore(tmp_path)
    chat = ChatService(store=store, engines=Engines(llm=EchoChat(clock, 1.0), tts=None, stt=None), clock=clock)
    words = 3000
    # Ids of the longest allowed length, which every event repeats.
    body = {"message": "w " * words, "message_id": "m" * 128, "session_id": "s" * 128}
    request: Reader | None = Reader()
    assert request is not None
    stream = EventStream(cast(Request, request), limit=8 * 1024 * 1024)
    turn = chat.start(ChatRequest.parse("ann", body), stream.deliver)
    stream.follow(turn)
    await eventually(lambda: bool(clock.getDelayedCalls()))  # the model streams, one word per step
    clock.advance(1)
    clock.advance(1)
    assert [e["data"] for e in request.events()] == ["w ", "w "]
    assert request.producer is not None

    request.producer.pauseProducing()  # the transport is backed up: the client does not read
    held = request.buffered()
    for _ in range(1000):
        clock.advance(1)
    assert len(turn.reply) == 1002  # the model's stream went on ...
    assert request.buffered() == held  # ... and not one more byte waits for the client

    request.producer.resumeProducing()
    assert request.events()[-1]["data"] == "w " * 1000  # what waited, as one delta

    request.producer.pauseProducing()
    for _ in range(500):
        clock.advance(1)
    cast(Any, request).processingFailed(Failure(ConnectionDone()))  # the client leaves
    left = request.buffered()
    while not turn.done.called:
        clock.advance(1)
        await deferLater(reactor, 0, lambda: None)  # the store writes in its thread
    assert request.buffered() == left  # nothing more is written for a client that left
    stored = await store.messages("ann", turn.session_id or "", limit=2)
    assert stored[1].text == "w " * words  # the whole reply is stored all the same

    gone = weakref.ref(request)
    request = None
    del stream, turn
    gc.collect()
    assert gone() is None  # nothing holds the departed client's request and what it was sent
    await store.close()
