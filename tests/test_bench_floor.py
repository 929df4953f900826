"""The benchmarks' floor does the wire work of a livetx turn: the same frames, from the same requests."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from livetx.testing.openai_server import synthetic_reply

from .support import connect
from .test_live_ws import openai_config

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from floor_server import floor_factory  # noqa: E402


def kinds(frames: list[dict[str, Any]]) -> Counter[str]:
    return Counter(f["t"] for f in frames)


@pytest_twisted.ensureDeferred
async def test_the_floor_sends_what_livetx_sends_for_a_turn(livetx: Any, openai: Any) -> None:
    openai.reply = synthetic_reply(40, 5)  # the benchmarks' reply: 40 tokens in 5 sentences
    server = await livetx(openai_config(openai.base_url))
    port = reactor.listenTCP(0, floor_factory(reactor, openai.base_url), interface="127.0.0.1")
    try:
        ours = await connect(server.url("/api/live_chat/ws", token=server.token()))
        bare = await connect(f"ws://127.0.0.1:{port.getHost().port}/")
        for client in (ours, bare):
            await client.turn("warm up")  # the second turn carries history upstream
        served = await ours.turn("benchmark turn 1 of socket 2")
        floor = await bare.turn("benchmark turn 1 of socket 2")
        assert kinds(floor) == kinds(served)
        assert [f["t"] for f in floor if f["t"] != "metrics"] == [f["t"] for f in served if f["t"] != "metrics"]
        sizes = [sum(len(payload) for payload, _ in client.raw[client._cursor - len(frames):client._cursor])
                 for client, frames in ((ours, served), (bare, floor))]  # raw and frames grow together
        assert abs(sizes[0] - sizes[1]) <= 0.01 * sizes[0], sizes
        asked = [r.path.rsplit("/", 2)[-2:] for r in openai.requests]
        assert asked.count(["chat", "completions"]) == 4 and asked.count(["audio", "speech"]) == 20
        await ours.close_and_wait()
        await bare.close_and_wait()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_floor_stops_a_turn_on_interrupt_as_livetx_does(openai: Any) -> None:
    openai.reply = synthetic_reply(40, 5)
    openai.token_delay = 0.01  # the interrupt scenario's pace: the turn still runs at its first audio
    port = reactor.listenTCP(0, floor_factory(reactor, openai.base_url), interface="127.0.0.1")
    try:
        client = await connect(f"ws://127.0.0.1:{port.getHost().port}/")
        client.send({"t": "interrupt"})  # no turn running: nothing happens
        client.send({"t": "text_input", "text": "interrupt me"})
        await client.until("response")
        client.send({"t": "interrupt"})
        await client.until("stop_play")
        client.send({"t": "text_input", "text": "and now?"})
        after = await client.until("end", timeout=20)
        assert [f.get("turn") for f in after] == [2] * len(after)  # nothing more of turn 1
        assert "stop_play" not in kinds(after)
        await client.close_and_wait()
    finally:
        await port.stopListening()
