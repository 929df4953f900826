"""What the benchmark's figures are judged by: the floor's figures, the machine's speed, the targets.

A turn or interrupt summary gets the floor's figures beside its own and the
ratios (:func:`compare`); every summary gets the time of a fixed Python loop
(:func:`calibrate`); :func:`judge` holds a summary to the :data:`TARGETS` of
its scenario.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

Summary = dict[str, Any]


def _calibration_loop() -> int:
    """Fixed pure-Python work: integer arithmetic, a dict store and a str() per step."""
    total, table = 0, {}
    for i in range(300_000):
        total += i * i % 7
        table[i & 1023] = str(i)
    return total + len(table)


def calibrate(runs: int = 7) -> Summary:
    """How fast this machine runs plain Python now: the fastest of ``runs`` timings of a fixed loop.

    Recorded in every summary, so figures from two machines (or one machine
    on two days) can be told apart by speed before anything is compared. The
    fastest run is the machine's speed; the median shows how much others were
    taking from it at the time.
    """
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        _calibration_loop()
        times.append((time.perf_counter() - started) * 1000)
    return {"loop_ms": min(times), "loop_median_ms": statistics.median(times), "runs": runs,
            "python": sys.version.split()[0], "cores": len(os.sched_getaffinity(0))}


#: What a turn summary is compared on against the floor's: (summary key, statistic or None for a number).
COMPARED = (("response", "median_ms"), ("response", "p95_ms"), ("end", "median_ms"), ("end", "p95_ms"),
            ("server_cpu_ms_per_turn", None))
#: The same for an interrupt summary.
COMPARED_INTERRUPTS = (("stop_play", "median_ms"), ("stop_play", "p99_ms"))


def _figure(summary: Summary, key: str, stat: str | None) -> float | None:
    value = summary.get(key)
    if stat is not None:
        value = value.get(stat) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) else None


def compare(summary: Summary, floor: Summary,
            figures: tuple[tuple[str, str | None], ...] = COMPARED) -> Summary:
    """Put the floor's figures beside the server's, and their ratios (server ÷ floor), into ``summary``."""
    rows: dict[str, Summary] = {}
    for key, stat in figures:
        ours, base = _figure(summary, key, stat), _figure(floor, key, stat)
        if ours is None or base is None:
            continue
        rows[f"{key}.{stat}" if stat else key] = {"server": ours, "floor": base,
                                                  "ratio": ours / base if base else None}
    summary["vs_floor"] = rows
    summary["floor"] = {k: floor[k] for k in (*(key for key, _ in figures), "turns", "wall_s", "machine")
                        if k in floor}
    return summary


@dataclass(frozen=True)
class Target:
    """One target: where its figure is read, and the most it may be."""

    figure: str
    scenario: str
    limit: float
    unit: str
    #: The figure in a summary, or None when this run's shape does not measure it.
    measure: Callable[[Summary], float | None]


def _idle_level(level: int, figure: Callable[[Summary], float | None]) -> Callable[[Summary], float | None]:
    def measure(s: Summary) -> float | None:
        row = next((r for r in s["levels"] if r["connections"] == level), None)
        return None if row is None else figure(row)
    return measure


def _vs_floor(connections: int, turns: int | None, name: str) -> Callable[[Summary], float | None]:
    """A turn figure as a ratio to the floor's, for runs of one shape."""
    def measure(s: Summary) -> float | None:
        if s["connections"] != connections or (turns is not None and s["turns_per_connection"] != turns):
            return None
        row = s.get("vs_floor", {}).get(name)
        return None if row is None else row["ratio"]
    return measure


FLOOR = "x floor"

#: Turn figures are held as ratios to the floor measured in the same run, so
#: they hold on any machine (benchmarks/RESULTS.md says how each limit was
#: chosen). The rest stay absolute: they are set by memory, by protocol
#: guarantees, or hold with room to spare on a machine several times slower.
TARGETS: tuple[Target, ...] = (
    Target("text -> first response, 1 connection, median", "text turns", 1.5, FLOOR,
           _vs_floor(1, None, "response.median_ms")),
    Target("text -> first response, 20 x 5, p95", "text turns", 1.5, FLOOR, _vs_floor(20, 5, "response.p95_ms")),
    Target("text -> end, 20 x 5, p95", "text turns", 1.5, FLOOR, _vs_floor(20, 5, "end.p95_ms")),
    Target("server CPU per text turn, 1 connection", "text turns", 1.5, FLOOR,
           _vs_floor(1, None, "server_cpu_ms_per_turn")),
    Target("server CPU per text turn, 20 x 5", "text turns", 1.5, FLOOR,
           _vs_floor(20, 5, "server_cpu_ms_per_turn")),
    Target("interrupt -> stop_play, median", "interrupt", 4, FLOOR,
           lambda s: s.get("vs_floor", {}).get("stop_play.median_ms", {}).get("ratio")),
    Target("audio frames after stop_play", "interrupt", 0, "frames", lambda s: s["audio_frames_after_stop_play"]),
    Target("idle RSS after start-up", "startup", 60, "MB", lambda s: s["idle_rss_mb"]),
    Target("10,000 idle connections: not held", "idle", 0, "sockets",
           _idle_level(10_000, lambda r: r["connections"] - r["held"])),
    Target("10,000 idle connections: memory each", "idle", 20, "KiB",
           _idle_level(10_000, lambda r: r.get("kib_per_connection"))),
    Target("start-up to accepting, median", "startup", 2, FLOOR,
           lambda s: s.get("vs_floor", {}).get("median_s", {}).get("ratio")),
)


def judge(summary: Summary) -> Summary:
    """Add the scenario's targets to its summary: limit, measured (None: not in this run) and met."""
    rows = []
    for target in TARGETS:
        if target.scenario != summary["scenario"]:
            continue
        value = target.measure(summary)
        rows.append({"figure": target.figure, "limit": target.limit, "unit": target.unit, "measured": value,
                     "met": None if value is None else value <= target.limit})
    summary["targets"] = rows
    return summary


def missed(summaries: list[Summary]) -> list[Summary]:
    """The targets measured and not met, over all the summaries."""
    return [row for s in summaries for row in s.get("targets", []) if row["met"] is False]


_DIGITS = {"ms": 2, "s": 2, "MB": 1, "KiB": 1, "frames": 0, "sockets": 0, FLOOR: 2}


def print_targets(s: Summary) -> None:
    if not s["targets"]:
        return
    print(f"{'target':42} {'limit':>12} {'measured':>14} {'met':>4}")
    for row in s["targets"]:
        limit = f"<= {row['limit']:g} {row['unit']}"
        measured = "-" if row["measured"] is None else f"{row['measured']:.{_DIGITS[row['unit']]}f} {row['unit']}"
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        print(f"{row['figure']:42} {limit:>12} {measured:>14} {met:>4}")
