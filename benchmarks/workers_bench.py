"""Scale-out on one machine: ``--workers 1`` against ``--workers 2``, and what Redis costs a turn.

Three servers in turn, on the same simulator settings and the same load (40
sockets x 5 text turns, back to back, so the server is saturated):

- ``single``: one process, no ``[cluster]`` (the embedded default);
- ``single+redis``: one process with ``[cluster] redis`` (limits, revocation
  and readiness through Redis: what the cluster costs a turn);
- ``workers 2``: ``--workers 2`` with ``[cluster] redis``.

Throughput is turns per second of wall time over the run, p95 the end of
each turn; CPU per turn adds up the server's whole process tree (supervisor
and workers). Nothing is pinned: two workers need both cores, so livetx, the
simulator, the client and Redis all share them, and the ratio below is what
a second worker buys on a machine that also runs its load.

    python benchmarks/workers_bench.py                    # the three runs
    python benchmarks/workers_bench.py --connections 10 --turns 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import live_client
import live_scenarios as sc
from live_bench import free_port, local_server, wait_for_port

#: Targets of issue 15: a second worker is worth at least this much throughput...
SCALE_TARGET = 1.5
#: ...and the cluster costs at most this much more CPU per turn.
CPU_TARGET = 1.2


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every process below it (workers under their supervisor)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(stat.parent.name)
        parents[child], ticks[child] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree = {pid}
    for child in sorted(parents):
        if parents[child] in tree:
            tree.add(child)
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


class Tree(sc.Server):
    def cpu(self) -> float | None:
        return tree_cpu_seconds(self.pid) if self.pid else None


def measure(name: str, args: argparse.Namespace, redis: str | None, workers: int) -> dict[str, Any]:
    extra = f'[cluster]\nredis = "{redis}"\n' if redis else ""
    with local_server(args.tokens, args.sentences, config_extra=extra, workers=workers) as (url, pid, _):
        server = Tree(url, pid)
        summary = sc.run(sc.turns(server, args.connections, args.turns, "text", args.rounds))
    summary["scenario"] = name
    summary["throughput_turns_per_s"] = summary["turns"] / summary["wall_s"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--sentences", type=int, default=5)
    parser.add_argument("--json", help="write the summaries to this file")
    args = parser.parse_args()
    live_client.raise_nofile_limit()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            redis = f"redis://127.0.0.1:{port}/0"
            runs = [measure("single", args, None, 1), measure("single+redis", args, redis, 1),
                    measure("workers 2", args, redis, 2)]
        finally:
            redis_server.terminate()
            redis_server.wait(10)
    single, clustered, two = runs
    scale = two["throughput_turns_per_s"] / clustered["throughput_turns_per_s"]
    cost = clustered["server_cpu_ms_per_turn"] / single["server_cpu_ms_per_turn"]
    print(f"\n{'run':14} {'turns/s':>8} {'p95 end ms':>11} {'CPU ms/turn':>12} {'machine busy':>13} {'not ours':>9}")
    for run in runs:
        print(f"{run['scenario']:14} {run['throughput_turns_per_s']:8.1f} {run['end']['p95_ms']:11.1f} "
              f"{run['server_cpu_ms_per_turn']:12.2f} {run['machine']['busy']:13.0%} {run['machine']['foreign']:9.0%}")
    print(f"\n2 workers / 1: {scale:.2f}x throughput (target >= {SCALE_TARGET}); "
          f"cluster on / off: {cost:.2f}x CPU per turn (target <= {CPU_TARGET})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"runs": runs, "scale": scale, "cluster_cpu_ratio": cost}, indent=2, default=str))


if __name__ == "__main__":
    main()
