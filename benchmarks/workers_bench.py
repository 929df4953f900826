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
import socket
import subprocess
import tempfile
import time
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


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def tcp_sockets(pid: int, port: int) -> dict[str, set[int]]:
    """The TCP sockets of ``pid`` on local ``port`` (IPv4 and IPv6), by state: inodes ``listening`` and ``open``."""
    mine = _socket_inodes(pid)
    found: dict[str, set[int]] = {"listening": set(), "open": set()}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if int(local.rsplit(":", 1)[1], 16) == port and inode in mine:
                if state == "0A":
                    found["listening"].add(inode)
                elif state == "01":
                    found["open"].add(inode)
    return found


def split(supervisor: int, port: int) -> list[int]:
    """Open connections on ``port`` held by each worker of ``supervisor``, largest first."""
    workers = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return sorted((len(tcp_sockets(int(pid), port)["open"]) for pid in workers), reverse=True)


class Tree(sc.Server):
    def cpu(self) -> float | None:
        return tree_cpu_seconds(self.pid) if self.pid else None


def sample_split(supervisor: int, port: int, connections: int = 20) -> list[int]:
    """Open ``connections`` TCP connections at once and count which worker accepted each."""
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    try:
        for _ in range(50):  # until every connection is accepted
            shares = split(supervisor, port)
            if sum(shares) == connections:
                break
            time.sleep(0.05)
        return shares
    finally:
        for client in clients:
            client.close()
        time.sleep(0.3)


def measure(name: str, args: argparse.Namespace, redis: str | None, workers: int) -> dict[str, Any]:
    extra = f'[cluster]\nredis = "{redis}"\n' if redis else ""
    with local_server(args.tokens, args.sentences, config_extra=extra, workers=workers) as (url, pid, _):
        server = Tree(url, pid)
        if workers > 1:  # how the kernel spreads new connections over the workers, three times
            port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            for _ in range(30):
                if len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()) == workers:
                    break
                time.sleep(0.1)
            summary_split = [sample_split(pid, port) for _ in range(3)]
        summary = sc.run(sc.turns(server, args.connections, args.turns, "text", args.rounds))
    summary["scenario"] = name
    summary["throughput_turns_per_s"] = summary["turns"] / summary["wall_s"]
    if workers > 1:
        summary["split_of_20"] = summary_split
    return summary


def main() -> None:
    args = sc.load_arguments(__doc__.split("\n\n")[0], connections=40).parse_args()
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
    print(f"\nsplit of 20 connections over the workers, three times: {two['split_of_20']}")
    print(f"2 workers / 1: {scale:.2f}x throughput (target >= {SCALE_TARGET}); "
          f"cluster on / off: {cost:.2f}x CPU per turn (target <= {CPU_TARGET})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"runs": runs, "scale": scale, "cluster_cpu_ratio": cost}, indent=2, default=str))


if __name__ == "__main__":
    main()
