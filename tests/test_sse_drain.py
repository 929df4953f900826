"""SIGTERM during SSE chat turns (issue 27.8): the last event of every stream is ``end``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.web.client import ResponseFailed

from livetx.auth.keys import KeyStore

from .test_shutdown import SLOW_ECHO, Twistd


async def stream(server: Twistd, key: str, words: str, chunks: list[bytes]) -> None:
    response = await treq.post(f"http://127.0.0.1:{server.port}/api/v1/chat", headers={"X-API-Key": key},
                               json={"username": "cy", "message": words}, reactor=reactor)
    try:
        await treq.collect(response, chunks.append)
    except ResponseFailed:
        chunks.append(b"data: {\"type\": \"(cut)\"}\n\n")  # the response never finished


def events(chunks: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(e[6:]) for e in b"".join(chunks).decode().split("\n\n") if e.startswith("data: ")]


@pytest_twisted.ensureDeferred
async def test_every_sse_stream_cut_by_a_drain_ends_with_error_then_end(tmp_path: Path) -> None:
    server = Twistd(tmp_path, SLOW_ECHO + "[server]\nshutdown_grace = 2\n")
    words = " ".join(f"w{i}" for i in range(400))  # 20 s: far longer than the grace
    key = KeyStore(server.data).create(["chat"])[1]
    streams: list[list[bytes]] = [[] for _ in range(6)]
    try:
        done = gatherResults([Deferred.fromCoroutine(stream(server, key, words, chunks)) for chunks in streams])
        while not all(b'"plain"' in b"".join(chunks) for chunks in streams):
            await deferLater(reactor, 0.02, lambda: None)
        server.terminate()
        await done
    finally:
        await server.finish()
    for chunks in streams:
        got = events(chunks)
        assert [e["type"] for e in got][-3:] == ["message_saved", "error", "end"], [e["type"] for e in got][-5:]
