"""How MCP's asyncio meets the reactor: server CPU per text turn under each choice, in one run.

Three ``twistd live`` processes side by side, taking rounds of text turns in
turn (the same client, simulator and shapes), so a machine whose speed
drifts moves every figure alike:

- ``epoll``: the default reactor, no ``[[tools.mcp]]`` (the baseline);
- ``epoll+mcp``: the default reactor with one stdio MCP server configured,
  its client on livetx's asyncio thread (what livetx does); its tools are
  offered to the model in every request, which the model here never calls;
- ``asyncio``: Twisted's asyncio reactor (``twistd -r asyncio``), no MCP —
  what running the SDK on the reactor's own loop would cost every turn.

    python benchmarks/mcp_bench.py --turns 10 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import live_scenarios as sc
from live_bench import local_server

ROOT = Path(__file__).resolve().parent.parent


def mcp_table(journal: Path) -> str:
    return (
        "[[tools.mcp]]\nname = \"t\"\n"
        f"command = {json.dumps(sys.executable)}\n"
        f"args = [\"-m\", \"tests.mcp_fixture_server\", \"stdio\", {json.dumps(str(journal))}]\n"
        f"cwd = {json.dumps(str(ROOT))}\n"
        f"env = {{ PYTHONPATH = {json.dumps(str(ROOT))} }}\n"
    )


async def measure(servers: dict[str, sc.Server], turns: int, rounds: int) -> dict[str, tuple[float, float]]:
    runs = {name: sc.TurnRun(server, 1, turns) for name, server in servers.items()}
    for run in runs.values():
        await run.warm()
    for _ in range(rounds):
        for run in runs.values():
            await run.round()
    summaries = {name: run.summary() for name, run in runs.items()}
    return {name: (s["server_cpu_ms_per_turn"], s["server_rss_mb"]) for name, s in summaries.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=10, help="text turns per round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        journal = Path(tmp, "journal")
        shapes = {"epoll": ("", None), "epoll+mcp": (mcp_table(journal), None), "asyncio": ("", "asyncio")}
        servers = {}
        for name, (extra, reactor) in shapes.items():
            url, pid, _ = stack.enter_context(local_server(config_extra=extra, reactor=reactor))
            servers[name] = sc.Server(url, pid)
        figures = asyncio.run(measure(servers, args.turns, args.rounds))
        assert journal.exists(), "the MCP server never started"
    base = figures["epoll"][0]
    print(f"server CPU per text turn, {args.rounds} rounds x {args.turns} turns, rounds taken in turn; RSS after:")
    for name, (ms, rss) in figures.items():
        print(f"  {name:10} {ms:6.2f} ms  {ms / base:.2f}x  {rss:6.1f} MB")


if __name__ == "__main__":
    main()
