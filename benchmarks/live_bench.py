"""Turn latency and server CPU, measured from outside the server.

Starts the OpenAI-compatible simulator and ``twistd live`` as separate
processes, then drives text turns with a client built on the ``websockets``
library (not the server's Autobahn), timing each frame from the moment the
``text_input`` frame is sent. Server CPU comes from /proc, so the figure
holds on a busy machine.

    python benchmarks/live_bench.py --turns 50 --connections 1
    python benchmarks/live_bench.py --turns 5 --connections 20
    python benchmarks/live_bench.py --url ws://host:6185/api/live_chat/ws?token=...   # any server

Needs ``pip install websockets`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import websockets

MARKS = ("bot_delta_chunk", "bot_text_chunk", "response", "end")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return time.monotonic() - start
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listening on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def local_server(
    tokens: int, sentences: int, delay: float, offline: bool = False
) -> Iterator[tuple[str, int, float]]:
    """Simulator + livetx in their own processes; yields (url, server pid, start-up seconds).

    ``offline`` runs livetx on its defaults instead: echo model, eSpeak NG.
    """
    sim_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "livetx.toml")
        base = f"http://127.0.0.1:{sim_port}/v1"
        config.write_text(
            "" if offline else
            f'[llm]\nprovider = "openai"\nbase_url = "{base}"\nmodel = "sim"\n'
            f'[tts]\nprovider = "openai"\nbase_url = "{base}"\n'
        )
        sim = subprocess.Popen(
            [sys.executable, "-m", "livetx.testing.openai_server", "--port", str(sim_port),
             "--tokens", str(tokens), "--sentences", str(sentences), "--delay", str(delay)],
            stdout=subprocess.DEVNULL,
        )
        data = Path(tmp, "data")
        started = time.monotonic()
        server = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "--logfile", str(Path(tmp, "twistd.log")), "live",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(data), "--config", str(config)],
        )
        try:
            wait_for_port(sim_port)
            wait_for_port(port)
            startup = time.monotonic() - started
            from livetx.auth.tokens import issue_token, load_or_create_secret

            token = issue_token(load_or_create_secret(data, None), "bench", 3600)
            yield f"ws://127.0.0.1:{port}/api/live_chat/ws?token={token}", server.pid, startup
        finally:
            for process in (server, sim):
                process.terminate()
                process.wait(timeout=30)


async def run_turns(url: str, turns: int, results: list[dict[str, float]]) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        for i in range(turns):
            sent = time.perf_counter()
            await ws.send(json.dumps({"t": "text_input", "text": f"benchmark turn {i}"}))
            seen: dict[str, float] = {}
            while "end" not in seen:
                frame = json.loads(await ws.recv())
                if frame["t"] in MARKS and frame["t"] not in seen:
                    seen[frame["t"]] = (time.perf_counter() - sent) * 1000
                if frame["t"] == "error":
                    raise RuntimeError(f"server error: {frame}")
            results.append(seen)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def measure(url: str, connections: int, turns: int, pid: int | None) -> dict[str, Any]:
    results: list[dict[str, float]] = []
    await run_turns(url, 1, [])  # warm-up: first connection, pools, imports
    cpu_before = cpu_seconds(pid) if pid else 0.0
    await asyncio.gather(*(run_turns(url, turns, results) for _ in range(connections)))
    cpu = (cpu_seconds(pid) - cpu_before) if pid else None
    summary: dict[str, Any] = {"connections": connections, "turns": len(results)}
    for mark in MARKS:
        values = [r[mark] for r in results if mark in r]
        if values:
            summary[mark] = {"median_ms": statistics.median(values), "p95_ms": percentile(values, 0.95),
                             "p99_ms": percentile(values, 0.99)}
    if cpu is not None:
        summary["server_cpu_ms_per_turn"] = cpu * 1000 / len(results)
        summary["server_rss_mb"] = rss_mb(pid)
    return summary


def print_table(summary: dict[str, Any]) -> None:
    print(f"\n{summary['connections']} connection(s), {summary['turns']} turns (ms from text_input sent)")
    print(f"{'frame':18} {'median':>9} {'p95':>9} {'p99':>9}")
    for mark in MARKS:
        if mark in summary:
            row = summary[mark]
            print(f"{mark:18} {row['median_ms']:9.2f} {row['p95_ms']:9.2f} {row['p99_ms']:9.2f}")
    if "server_cpu_ms_per_turn" in summary:
        print(f"server CPU per turn: {summary['server_cpu_ms_per_turn']:.2f} ms; "
              f"RSS {summary['server_rss_mb']:.1f} MB")
    if "startup_s" in summary:
        print(f"start-up to accepting: {summary['startup_s']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an existing Live API socket URL (skip starting livetx)")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--sentences", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.0, help="simulator seconds between tokens")
    parser.add_argument("--offline", action="store_true", help="livetx on its defaults: echo model, eSpeak NG")
    parser.add_argument("--json", help="also write the summary to this file")
    args = parser.parse_args()
    if args.url:
        summary = asyncio.run(measure(args.url, args.connections, args.turns, None))
    else:
        with local_server(args.tokens, args.sentences, args.delay, args.offline) as (url, pid, startup):
            summary = asyncio.run(measure(url, args.connections, args.turns, pid))
            summary["startup_s"] = startup
    print_table(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
