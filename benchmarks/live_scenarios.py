"""The benchmark scenarios: each returns a JSON-able summary and prints a table.

A summary always says where it ran (URL, load average before and after) so a
figure taken while other work loaded the machine can be told apart. Server
CPU and RSS come from /proc and need the server's pid (known when the
harness started the server, or given with ``--server-pid``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from websockets.protocol import State

import live_client as client
from live_bench import cpu_seconds, local_server, rss_mb
from live_targets import compare, judge, print_targets

Summary = dict[str, Any]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with few samples it is a real sample, never an interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def spread(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median_ms": statistics.median(values), "p95_ms": percentile(values, 0.95),
            "p99_ms": percentile(values, 0.99), "max_ms": max(values)}


class Server:
    """The server under test as the client sees it, plus /proc when it is local."""

    def __init__(self, url: str, pid: int | None) -> None:
        self.url = url
        self.pid = pid

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid) if self.pid else None

    def rss(self) -> float | None:
        return rss_mb(self.pid) if self.pid else None


Ticks = tuple[int, int, dict[int, int]]


def machine_ticks() -> Ticks:
    """(busy, total) clock ticks of all cores since boot, and the busy ticks of this benchmark's processes.

    The benchmark's processes are this client and its descendants (the
    server and the simulator it started). Busy time beyond theirs is work
    of others sharing the machine: the "foreign" share that makes a latency
    figure noisy.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    parents, ticks = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        pid = int(stat.parent.name)
        parents[pid] = int(after_name[1])
        ticks[pid] = int(after_name[11]) + int(after_name[12])
    ours = {os.getpid()}
    for pid in sorted(parents):  # children have larger pids, unless pids wrapped
        if parents[pid] in ours:
            ours.add(pid)
    return sum(fields) - idle, sum(fields), {pid: ticks[pid] for pid in ours if pid in ticks}


def machine_load(before: Ticks, after: Ticks) -> dict[str, float]:
    """How busy the machine was between two readings, and how much of that was not this benchmark (0..1)."""
    total = after[1] - before[1] or 1
    busy = (after[0] - before[0]) / total
    ours = sum(ticks - before[2].get(pid, 0) for pid, ticks in after[2].items()) / total
    return {"busy": busy, "foreign": min(busy, max(0.0, busy - ours))}


def _frame(name: str, server: Server) -> Summary:
    return {"scenario": name, "url": server.url.split("?")[0], "loadavg_before": os.getloadavg()[0]}


def _finish(summary: Summary) -> Summary:
    summary["loadavg_after"] = os.getloadavg()[0]
    return summary


# -- turns ------------------------------------------------------------------------


class TurnRun:
    """``connections`` sockets at once, each running ``turns`` turns back to back, round after round.

    Rounds are run one at a time (:meth:`round`), so two servers' runs can
    take turns round by round (:func:`paired_turns`); the summary counts the
    server's CPU and the machine's load over its own rounds only.
    """

    def __init__(self, server: Server, connections: int, turns: int, kind: str = "text",
                 audio_seconds: float = 1.0, pace: bool = True) -> None:
        self.server, self.connections, self.turns, self.kind, self.pace = server, connections, turns, kind, pace
        self.parts = client.speech_frames(audio_seconds) if kind == "audio" else []
        self.results: list[client.TurnTimes] = []
        self.first: list[client.TurnTimes] = []  # each socket's first turn, which also waits for its history
        self.rounds = 0
        self.cpu: float | None = 0.0
        self.wall = 0.0
        self.busy, self.total, self.ours = 0, 0, 0
        self.started = _frame(f"{kind} turns", server)

    async def _socket(self, n: int, record: bool) -> None:
        async with await client.open_socket(self.server.url) as ws:
            for i in range(self.turns if record else 1):
                if self.kind == "audio":
                    times = await client.audio_turn(ws, self.parts, f"c{n}-t{i}", self.pace)
                else:
                    times = await client.text_turn(ws, f"benchmark turn {i} of socket {n}")
                if record:
                    self.results.append(times)
                    if i == 0:
                        self.first.append(times)

    async def warm(self) -> None:
        """One turn on a socket of its own first: pools, caches, first imports."""
        await self._socket(-1, record=False)

    async def round(self) -> None:
        cpu_before, wall, ticks = self.server.cpu(), time.perf_counter(), machine_ticks()
        await asyncio.gather(*(self._socket(n, True) for n in range(self.connections)))
        cpu_after, after = self.server.cpu(), machine_ticks()
        self.wall += time.perf_counter() - wall
        load = machine_load(ticks, after)
        total = after[1] - ticks[1]
        self.total += total
        self.busy += round(load["busy"] * total)
        self.ours += round((load["busy"] - load["foreign"]) * total)
        self.cpu = None if cpu_before is None or cpu_after is None or self.cpu is None else (
            self.cpu + cpu_after - cpu_before)
        self.rounds += 1

    def summary(self) -> Summary:
        summary = self.started
        summary.update(connections=self.connections, turns_per_connection=self.turns, rounds=self.rounds)
        results, first = self.results, self.first
        summary["turns"] = len(results)
        summary["wall_s"] = self.wall
        total = self.total or 1
        summary["machine"] = {"busy": self.busy / total, "foreign": max(0.0, (self.busy - self.ours) / total)}
        for mark in client.MARKS:
            values = [r.marks[mark] for r in results if mark in r.marks]
            if values:
                summary[mark] = spread(values)
        if self.turns > 1:
            later = [r for r in results if not any(r is f for f in first)]
            summary["by_turn"] = {
                name: {mark: spread([r.marks[mark] for r in group]) for mark in ("response", "end")
                       if all(mark in r.marks for r in group)}
                for name, group in (("first", first), ("later", later))
            }
        summary["audio_frames_per_turn"] = statistics.mean(r.audio_frames for r in results)
        if self.cpu is not None:
            summary["server_cpu_ms_per_turn"] = self.cpu * 1000 / len(results)
            summary["server_rss_mb"] = self.server.rss()
        return _finish(summary)


async def turns(server: Server, connections: int, turns: int, kind: str = "text",
                rounds: int = 1, audio_seconds: float = 1.0, pace: bool = True) -> Summary:
    """``connections`` sockets at once, each running ``turns`` turns back to back, ``rounds`` times."""
    run = TurnRun(server, connections, turns, kind, audio_seconds, pace)
    await run.warm()
    for _ in range(rounds):
        await run.round()
    return run.summary()


async def paired_turns(floor: Server, server: Server, connections: int, turns: int, kind: str = "text",
                       rounds: int = 1, audio_seconds: float = 1.0, pace: bool = True) -> tuple[Summary, Summary]:
    """The same shape on the floor and on the server, taking turns round by round, then compared.

    A machine whose speed drifts (others' work comes and goes) moves both
    sides of each ratio alike, round by round rather than run by run.
    """
    runs = [TurnRun(s, connections, turns, kind, audio_seconds, pace) for s in (floor, server)]
    for run in runs:
        await run.warm()
    for _ in range(rounds):
        for run in runs:
            await run.round()
    base, summary = (run.summary() for run in runs)
    return base, compare(summary, base)


def print_turns(s: Summary) -> None:
    print(f"\n{s['scenario']}: {s['connections']} connection(s) x {s['turns_per_connection']} turns"
          f" x {s['rounds']} round(s) = {s['turns']} turns in {s['wall_s']:.1f} s"
          f" (ms from the last input frame; load {s['loadavg_before']:.2f},"
          f" machine {100 * s['machine']['busy']:.0f}% busy, {100 * s['machine']['foreign']:.0f}% not ours)")
    print(f"{'frame':18} {'median':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    for mark in client.MARKS:
        if mark in s:
            r = s[mark]
            print(f"{mark:18} {r['median_ms']:8.2f} {r['p95_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f}")
    for name, row in s.get("by_turn", {}).items():
        cells = ", ".join(f"{mark} p95 {r['p95_ms']:.1f}" for mark, r in row.items())
        print(f"  {name} turn on a socket: {cells}")
    print(f"audio frames per turn: {s['audio_frames_per_turn']:.1f}")
    if "server_cpu_ms_per_turn" in s:
        print(f"server CPU per turn: {s['server_cpu_ms_per_turn']:.2f} ms; RSS {s['server_rss_mb']:.1f} MB")
    if s.get("vs_floor"):
        print(f"{'against the floor':26} {'server':>9} {'floor':>9} {'ratio':>7}")
        for name, row in s["vs_floor"].items():
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
            print(f"{name:26} {row['server']:9.2f} {row['floor']:9.2f} {ratio:>7}")


# -- barge-in ---------------------------------------------------------------------


async def interrupts(server: Server, trials: int, settle: float) -> Summary:
    """Interrupt ``trials`` turns on their first audio; time ``stop_play`` and count leaks."""
    summary = _frame("interrupt", server)
    barges: list[client.Barge] = []
    async with await client.open_socket(server.url) as ws:
        await client.text_turn(ws, "warm-up")
        for i in range(trials):
            barges.append(await client.interrupt_turn(ws, f"please interrupt me {i}", settle))
    latencies = [b.stop_play_ms for b in barges if b.stop_play_ms is not None]
    summary.update(trials=trials, settle_s=settle, stop_play=spread(latencies),
                   missing_stop_play=trials - len(latencies),
                   audio_frames_after_stop_play=sum(b.audio_after for b in barges),
                   frames_after_stop_play=sum(b.frames_after for b in barges))
    return _finish(summary)


def print_interrupts(s: Summary) -> None:
    r = s["stop_play"]
    print(f"\ninterrupt -> stop_play, {s['trials']} trials (ms; load {s['loadavg_before']:.2f})")
    print(f"{'median':>8} {'p95':>8} {'p99':>8} {'max':>8} {'audio after':>12} {'frames after':>13}")
    print(f"{r['median_ms']:8.2f} {r['p95_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f}"
          f" {s['audio_frames_after_stop_play']:12d} {s['frames_after_stop_play']:13d}")
    for name, row in s.get("vs_floor", {}).items():
        print(f"  {name}: floor {row['floor']:.2f} ms, ratio {row['ratio']:.2f}x")


# -- idle sockets -----------------------------------------------------------------


async def idle(server: Server, levels: list[int], hold: float, concurrency: int) -> Summary:
    """Grow to each level of idle sockets, hold them, read the server's RSS.

    "Held" means every socket is still open after ``hold`` seconds; a turn on
    one more socket then shows the server still serves while holding them.
    """
    client.raise_nofile_limit()
    summary = _frame("idle", server)
    rows: list[Summary] = []
    sockets: list[Any] = []
    base = server.rss()
    try:
        for level in sorted(levels):
            opened = time.perf_counter()
            sockets += await client.hold_idle(server.url, level - len(sockets), concurrency)
            opened = time.perf_counter() - opened
            await asyncio.sleep(hold)
            held = sum(ws.state is State.OPEN for ws in sockets)
            rss = server.rss()
            row: Summary = {"connections": level, "held": held, "open_s": opened, "rss_mb": rss}
            if rss is not None and base is not None and level:
                row["kib_per_connection"] = (rss - base) * 1024 / level
            rows.append(row)
        async with await client.open_socket(server.url) as ws:
            summary["turn_while_holding"] = (await client.text_turn(ws, "still there?")).marks
    finally:
        await client.close_all(sockets)
    if len(rows) >= 2 and rows[-1]["rss_mb"] is not None and rows[-2]["connections"]:
        a, b = rows[-2], rows[-1]
        summary["marginal_kib_per_connection"] = (b["rss_mb"] - a["rss_mb"]) * 1024 / (
            b["connections"] - a["connections"])
    summary.update(rss_at_start_mb=base, levels=rows, hold_s=hold)
    return _finish(summary)


def print_idle(s: Summary) -> None:
    print(f"\nidle connections (held {s['hold_s']:g} s each level; load {s['loadavg_before']:.2f})")
    print(f"{'connections':>11} {'held':>6} {'open s':>7} {'RSS MB':>8} {'KiB each':>9}")
    for r in s["levels"]:
        each = f"{r['kib_per_connection']:9.1f}" if "kib_per_connection" in r else f"{'-':>9}"
        rss = f"{r['rss_mb']:8.1f}" if r["rss_mb"] is not None else f"{'-':>8}"
        print(f"{r['connections']:11d} {r['held']:6d} {r['open_s']:7.2f} {rss} {each}")
    if "marginal_kib_per_connection" in s:
        print(f"marginal: {s['marginal_kib_per_connection']:.1f} KiB per connection")
    first = s["turn_while_holding"].get("response")
    if first is not None:
        print(f"a turn while holding them: first response after {first:.1f} ms")


# -- start-up ---------------------------------------------------------------------


def startup(runs: int, **server_options: Any) -> Summary:
    """Start livetx ``runs`` times: process start to port accepting, and RSS then.

    Each run starts the floor server too, just before, so the start-up time
    can be read as a ratio (both import Twisted, Autobahn and treq and open a
    port; the rest is livetx's own).
    """
    summary: Summary = {"scenario": "startup", "loadavg_before": os.getloadavg()[0]}
    seconds, rss, floor = [], [], []
    for _ in range(runs):
        with local_server(**server_options, floor=True) as (_url, _pid, took):
            floor.append(took)
        with local_server(**server_options) as (_url, pid, took):
            seconds.append(took)
            time.sleep(0.5)  # let the reactor settle before reading RSS
            rss.append(rss_mb(pid))
    median, floor_median = statistics.median(seconds), statistics.median(floor)
    summary.update(runs=runs, startup_s=seconds, median_s=median, idle_rss_mb=statistics.median(rss),
                   floor_startup_s=floor, vs_floor={"median_s": {"server": median, "floor": floor_median,
                                                                 "ratio": median / floor_median}})
    return _finish(summary)


def print_startup(s: Summary) -> None:
    print(f"\nstart-up, {s['runs']} runs (load {s['loadavg_before']:.2f})")
    print(f"process start -> accepting: median {s['median_s']:.2f} s "
          f"({', '.join(f'{x:.2f}' for x in s['startup_s'])}); idle RSS {s['idle_rss_mb']:.1f} MB")
    row = s["vs_floor"]["median_s"]
    print(f"the floor: median {row['floor']:.2f} s ({', '.join(f'{x:.2f}' for x in s['floor_startup_s'])}); "
          f"ratio {row['ratio']:.2f}x")


PRINTERS: dict[str, Callable[[Summary], None]] = {
    "text turns": print_turns, "audio turns": print_turns, "interrupt": print_interrupts,
    "idle": print_idle, "startup": print_startup,
}


def show(summary: Summary) -> Summary:
    judge(summary)
    PRINTERS[summary["scenario"]](summary)
    print_targets(summary)
    return summary


def load_arguments(description: str, connections: int) -> argparse.ArgumentParser:
    """The options of a benchmark that runs text turns on the simulator: the load, and where the JSON goes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--connections", type=int, default=connections)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--sentences", type=int, default=5)
    parser.add_argument("--json", help="write the summaries to this file")
    return parser


def run(coroutine: Awaitable[Summary]) -> Summary:
    return show(asyncio.run(coroutine))  # type: ignore[arg-type]
