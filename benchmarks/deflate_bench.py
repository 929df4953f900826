"""permessage-deflate against plain sockets: memory per idle socket, CPU per text turn.

Two servers in turn, both with ``[server] compression = true``; the first
run's client offers no compression (plain sockets), the second's offers
permessage-deflate (the ``websockets`` client's defaults; the server
compresses on 2 KiB windows and asks the client down to them). Each run:

- memory: ``--sockets`` sockets each take one text turn (so each has its
  zlib state both ways), then sit idle; the server's RSS growth per socket;
- CPU: ``--connections`` x ``--turns`` text turns; server CPU per turn.

The figures are ratios, compressed over plain, measured in the same run.

    python benchmarks/deflate_bench.py
    python benchmarks/deflate_bench.py --sockets 100 --connections 5 --turns 4   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import live_client
import live_scenarios as sc
from live_bench import local_server

COMPRESSION = "compression = true\n"


async def idle_after_a_turn(server: sc.Server, count: int, concurrency: int = 32) -> dict[str, Any]:
    """RSS growth per socket once ``count`` sockets have each had one turn and sit idle."""
    live_client.raise_nofile_limit()
    await asyncio.sleep(1.0)
    base = server.rss()
    gate = asyncio.Semaphore(concurrency)
    sockets: list[Any] = []

    async def one() -> None:
        async with gate:
            ws = await live_client.open_socket(server.url, ping_interval=None, close_timeout=1)
            sockets.append(ws)
            await live_client.text_turn(ws, "hello there, how are you today?")

    try:
        await asyncio.gather(*(one() for _ in range(count)))
        await asyncio.sleep(2.0)
        rss = server.rss()
    finally:
        await live_client.close_all(sockets)
    assert base is not None and rss is not None
    return {"sockets": count, "rss_base_mb": base, "rss_mb": rss, "kib_per_socket": (rss - base) * 1024 / count}


def measure(compressed: bool, args: argparse.Namespace) -> dict[str, Any]:
    live_client.OFFER_COMPRESSION = compressed
    with local_server(args.tokens, args.sentences, server_extra=COMPRESSION) as (url, pid, _):
        server = sc.Server(url, pid)
        memory = asyncio.run(idle_after_a_turn(server, args.sockets))
    with local_server(args.tokens, args.sentences, server_extra=COMPRESSION) as (url, pid, _):
        server = sc.Server(url, pid)
        turns = sc.run(sc.turns(server, args.connections, args.turns, "text", args.rounds))
    return {"compressed": compressed, "memory": memory, "cpu_ms_per_turn": turns["server_cpu_ms_per_turn"],
            "turns": turns}


def main() -> None:
    parser = sc.load_arguments(__doc__.split("\n\n")[0], connections=10)
    parser.add_argument("--sockets", type=int, default=300)
    args = parser.parse_args()
    started = time.time()
    plain, deflate = measure(False, args), measure(True, args)
    print(f"\n{'run':8} {'KiB per idle socket':>20} {'CPU ms per text turn':>21}")
    for run in (plain, deflate):
        print(f"{'deflate' if run['compressed'] else 'plain':8} {run['memory']['kib_per_socket']:20.1f} "
              f"{run['cpu_ms_per_turn']:21.2f}")
    extra_kib = deflate["memory"]["kib_per_socket"] - plain["memory"]["kib_per_socket"]
    print(f"\ndeflate - plain: {extra_kib:+.1f} KiB per idle socket; "
          f"deflate / plain: {deflate['cpu_ms_per_turn'] / plain['cpu_ms_per_turn']:.2f}x CPU per text turn "
          f"({time.time() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"plain": plain, "deflate": deflate}, indent=2, default=str))


if __name__ == "__main__":
    main()
