"""The benchmark's targets: turn figures judged as ratios to the floor measured in the same run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import live_targets as sc  # noqa: E402

RESULTS = Path(__file__).parent.parent / "benchmarks" / "RESULTS.md"


def spread(median: float, p95: float) -> dict[str, float]:
    return {"n": 100, "median_ms": median, "p95_ms": p95, "p99_ms": p95, "max_ms": p95}


def turns(connections: int, turns: int, response_p95: float, cpu: float) -> dict[str, Any]:
    return {"scenario": "text turns", "connections": connections, "turns_per_connection": turns,
            "response": spread(2.0, response_p95), "end": spread(3.0, 70.0), "server_cpu_ms_per_turn": cpu}


def verdicts(summary: dict[str, Any]) -> dict[str, bool | None]:
    return {row["figure"]: row["met"] for row in sc.judge(summary)["targets"]}


def test_turn_figures_are_judged_against_the_floor_of_the_same_shape() -> None:
    floor = turns(1, 50, 10.0, 2.0)  # the floor's median response is 2 ms too
    one = verdicts(sc.compare(turns(1, 50, 99.0, 2.9), floor))
    assert one["text -> first response, 1 connection, median"] is True  # 1.0x
    assert one["server CPU per text turn, 1 connection"] is True  # 1.45x <= 1.5x
    assert one["text -> first response, 20 x 5, p95"] is None  # not measured by this run
    many = sc.compare(turns(20, 5, 61.0, 3.1), turns(20, 5, 40.0, 2.0))
    assert many["vs_floor"]["response.p95_ms"] == {"server": 61.0, "floor": 40.0, "ratio": 61.0 / 40.0}
    assert many["floor"]["server_cpu_ms_per_turn"] == 2.0
    judged = verdicts(many)
    assert judged["text -> first response, 20 x 5, p95"] is False  # 1.53x > 1.5x
    assert judged["text -> end, 20 x 5, p95"] is True  # 1.0x
    assert judged["server CPU per text turn, 20 x 5"] is False  # 1.55x


def test_without_a_floor_the_ratio_targets_are_not_judged() -> None:
    judged = verdicts(turns(20, 5, 500.0, 50.0))
    assert set(judged.values()) == {None}


def test_missed_collects_failures_over_scenarios() -> None:
    idle = {"scenario": "idle", "levels": [
        {"connections": 1000, "held": 1000, "rss_mb": 80.0, "kib_per_connection": 19.0},
        {"connections": 10_000, "held": 9_999, "rss_mb": 250.0, "kib_per_connection": 19.5},
    ]}
    barge = {"scenario": "interrupt", "stop_play": {"p99_ms": 3.0}, "audio_frames_after_stop_play": 0}
    summaries = [sc.judge(s) for s in (idle, barge, sc.compare(turns(1, 5, 1.0, 1.0), turns(1, 5, 1.0, 1.0)))]
    assert [row["figure"] for row in sc.missed(summaries)] == ["10,000 idle connections: not held"]


def test_the_calibration_loop_is_timed() -> None:
    machine = sc.calibrate(runs=2)
    assert 0 < machine["loop_ms"] <= machine["loop_median_ms"] and machine["runs"] == 2


def test_results_state_each_ratio_target_as_the_harness_judges_it() -> None:
    text = RESULTS.read_text()
    for target in sc.TARGETS:
        if target.unit == sc.FLOOR:
            assert f"≤ {target.limit:g}× floor" in text, target.figure
