"""Scale-out on one machine: ``--workers 1`` against ``--workers 2``, and what Redis costs a turn.

Five servers in turn, on the same simulator settings and the same load (40
sockets x 5 text turns, back to back, so the server is saturated):

- ``floor``: bare Twisted and Autobahn doing the same wire work
  (:mod:`floor_server`), one process;
- ``floor workers 2``: two such processes, each accepting on its own
  ``SO_REUSEPORT`` socket on the port, as ``--workers 2`` does;
- ``single``: one process, no ``[cluster]`` (the embedded default);
- ``single+redis``: one process with ``[cluster] redis`` (limits, revocation
  and readiness through Redis: what the cluster costs a turn);
- ``workers 2``: ``--workers 2`` with ``[cluster] redis``.

Throughput is turns per second of wall time over the run, p95 the end of
each turn; CPU per turn adds up the server's whole process tree (supervisor
and workers). Nothing is pinned: two workers need both cores, so livetx, the
simulator, the client and Redis all share them, and the ratio below is what
a second worker buys on a machine that also runs its load. What a second
process can buy there at best is the floor's own ratio, measured in the same
run: livetx's ratio divided by it (the share of the floor's gain livetx
keeps) is the figure that holds on a busy machine, where the bare ratios
swing with whatever else takes the cores.

    python benchmarks/workers_bench.py                    # the five runs, three times over
    python benchmarks/workers_bench.py --connections 10 --turns 2 --repeat 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
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
#: ...(issue 27: on a busy machine, at least this share of what a second process buys the floor)...
SCALE_OF_FLOOR_TARGET = 0.9
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


def measure(name: str, args: argparse.Namespace, redis: str | None, workers: int,
            floor: bool = False) -> dict[str, Any]:
    extra = f'[cluster]\nredis = "{redis}"\n' if redis else ""
    with local_server(args.tokens, args.sentences, config_extra=extra, workers=workers, floor=floor) as (url, pid, _):
        server = Tree(url, pid)
        if workers > 1:  # how the kernel spreads new connections over the workers, three times
            port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            for _ in range(100):  # until every worker listens: the floor's bind their sockets as they start
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                if len(children) == workers and all(tcp_sockets(int(c), port)["listening"] for c in children):
                    break
                time.sleep(0.1)
            summary_split = [sample_split(pid, port) for _ in range(3)]
        summary = sc.run(sc.turns(server, args.connections, args.turns, "text", args.rounds))
    summary["scenario"] = name
    summary["throughput_turns_per_s"] = summary["turns"] / summary["wall_s"]
    if workers > 1:
        summary["split_of_20"] = summary_split
    return summary


#: The five servers of a repetition, in the order they run: (name, on Redis, processes, floor).
SERVERS = (("floor", False, 1, True), ("floor workers 2", False, 2, True), ("single", False, 1, False),
           ("single+redis", True, 1, False), ("workers 2", True, 2, False))


def ratios(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """One repetition's ratios, each between runs a few seconds apart (so under alike load).

    ``free_*`` divide each throughput by the share of the machine other
    processes left the benchmark (1 - "not ours"), so a run that shared its
    cores with someone else's tests is not taken for a slow server; the CPU
    a turn costs (over the server's process tree) hardly depends on that at all.
    """
    throughput = {name: run["throughput_turns_per_s"] for name, run in runs.items()}
    free = {name: throughput[name] / max(0.05, 1 - run["machine"]["foreign"]) for name, run in runs.items()}
    cpu = {name: run["server_cpu_ms_per_turn"] for name, run in runs.items()}
    out = {}
    for prefix, rate in (("", throughput), ("free_", free)):
        scale, floor_scale = rate["workers 2"] / rate["single+redis"], rate["floor workers 2"] / rate["floor"]
        out.update({f"{prefix}scale": scale, f"{prefix}floor_scale": floor_scale,
                    f"{prefix}scale_of_floor": scale / floor_scale,
                    f"{prefix}one_of_floor": rate["single+redis"] / rate["floor"],
                    f"{prefix}two_of_floor": rate["workers 2"] / rate["floor workers 2"]})
    out.update({"cpu_two_of_one": cpu["workers 2"] / cpu["single+redis"],
                "floor_cpu_two_of_one": cpu["floor workers 2"] / cpu["floor"],
                "cluster_cpu_ratio": cpu["single+redis"] / cpu["single"]})
    return out


def main() -> None:
    parser = sc.load_arguments(__doc__.split("\n\n")[0], connections=40)
    parser.add_argument("--repeat", type=int, default=3,
                        help="run the five servers this many times over; each ratio's median is reported")
    args = parser.parse_args()
    live_client.raise_nofile_limit()
    port = free_port()
    repetitions: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            redis = f"redis://127.0.0.1:{port}/0"
            for _ in range(args.repeat):
                repetitions.append({name: measure(name, args, redis if clustered else None, workers, floor=floor)
                                    for name, clustered, workers, floor in SERVERS})
        finally:
            redis_server.terminate()
            redis_server.wait(10)
    print(f"\n{'run':16} {'turns/s':>8} {'p95 end ms':>11} {'CPU ms/turn':>12} {'machine busy':>13} {'not ours':>9}")
    for runs in repetitions:
        for run in runs.values():
            print(f"{run['scenario']:16} {run['throughput_turns_per_s']:8.1f} {run['end']['p95_ms']:11.1f} "
                  f"{run['server_cpu_ms_per_turn']:12.2f} {run['machine']['busy']:13.0%} "
                  f"{run['machine']['foreign']:9.0%}")
    each = [ratios(runs) for runs in repetitions]
    median = {key: statistics.median(r[key] for r in each) for key in each[0]}
    print(f"\nsplit of 20 connections over the workers, three times: "
          f"livetx {[runs['workers 2']['split_of_20'] for runs in repetitions]}, "
          f"floor {[runs['floor workers 2']['split_of_20'] for runs in repetitions]}")
    print("ratios of each repetition, then their median:")
    for key in median:
        print(f"  {key:21} {' '.join(f'{r[key]:.2f}' for r in each)}  median {median[key]:.2f}")
    print(f"2 workers / 1: livetx {median['scale']:.2f}x throughput (target >= {SCALE_TARGET} on a machine to "
          f"itself), floor {median['floor_scale']:.2f}x: livetx keeps {median['scale_of_floor']:.2f} of the floor's "
          f"gain, {median['free_scale_of_floor']:.2f} per free share (target >= {SCALE_OF_FLOOR_TARGET}); "
          f"CPU per turn 2 workers / 1: livetx {median['cpu_two_of_one']:.2f}x, floor "
          f"{median['floor_cpu_two_of_one']:.2f}x; cluster on / off: {median['cluster_cpu_ratio']:.2f}x CPU per "
          f"turn (target <= {CPU_TARGET})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"repetitions": repetitions, "ratios": each, "median": median}, indent=2, default=str))


if __name__ == "__main__":
    main()
