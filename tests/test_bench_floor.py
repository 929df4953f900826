"""The benchmarks' floor does the wire work of a livetx turn: the same frames, from the same requests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
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
from live_bench import FLOOR_SERVER, free_port  # noqa: E402
from workers_bench import split, tcp_sockets  # noqa: E402
from .test_workers import children  # noqa: E402


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


def test_the_floors_workers_each_accept_on_their_own_socket_and_stop_on_sigterm() -> None:
    """``floor_server.py --workers 2``, the floor of ``workers_bench.py``: two processes on ``SO_REUSEPORT``
    sockets, as livetx's workers. On blocking sockets a worker hung in ``accept()`` after a burst, deaf to
    SIGTERM, and the benchmark with it."""
    port = free_port()
    floor = subprocess.Popen([sys.executable, str(FLOOR_SERVER), "--port", str(port),
                              "--upstream", "http://127.0.0.1:9/v1", "--workers", "2"])
    try:
        for _ in range(300):  # until both workers listen
            workers = children(floor.pid)
            if len(workers) == 2 and all(tcp_sockets(pid, port)["listening"] for pid in workers):
                break
            time.sleep(0.1)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        for _ in range(100):
            shares = split(floor.pid, port)
            if sum(shares) == 40:
                break
            time.sleep(0.05)
        # A hash of the client's port: each worker's share is binomial; below 8 of 40 is 1 in 3,000.
        assert sum(shares) == 40 and min(shares) >= 8, shares
        for client in clients:
            client.close()
    finally:
        floor.terminate()
        try:
            floor.wait(30)  # the workers ended: the floor waits for them
        except subprocess.TimeoutExpired:
            pass
        hung = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
        for pid in [floor.pid, *hung]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        floor.wait(10)
    assert hung == [] and floor.returncode == 0
