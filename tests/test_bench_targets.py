"""The benchmark's targets table judges summaries as issue 8's table says."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import live_scenarios as sc  # noqa: E402


def turns(connections: int, turns: int, response_p95: float, cpu: float) -> dict[str, Any]:
    spread = {"median_ms": 2.0, "p95_ms": response_p95, "p99_ms": response_p95, "max_ms": response_p95}
    return {"scenario": "text turns", "connections": connections, "turns_per_connection": turns,
            "response": spread, "end": {**spread, "p95_ms": 70.0}, "server_cpu_ms_per_turn": cpu}


def verdicts(summary: dict[str, Any]) -> dict[str, bool | None]:
    return {row["figure"]: row["met"] for row in sc.judge(summary)["targets"]}


def test_only_the_run_shape_a_target_names_is_judged() -> None:
    one = verdicts(turns(1, 50, 99.0, 3.0))
    assert one["text -> first response, 1 connection, median"] is True  # 2 ms <= 5 ms
    assert one["text -> first response, 20 x 5, p95"] is None  # not measured by this run
    assert one["server CPU per text turn"] is True
    many = verdicts(turns(20, 5, 51.0, 5.5))
    assert many["text -> first response, 20 x 5, p95"] is False
    assert many["text -> end, 20 x 5, p95"] is True
    assert many["server CPU per text turn"] is False


def test_missed_collects_failures_over_scenarios() -> None:
    idle = {"scenario": "idle", "levels": [
        {"connections": 1000, "held": 1000, "rss_mb": 80.0, "kib_per_connection": 19.0},
        {"connections": 10_000, "held": 9_999, "rss_mb": 250.0, "kib_per_connection": 19.5},
    ]}
    barge = {"scenario": "interrupt", "stop_play": {"p99_ms": 3.0}, "audio_frames_after_stop_play": 0}
    summaries = [sc.judge(s) for s in (idle, barge, turns(1, 5, 1.0, 1.0))]
    assert [row["figure"] for row in sc.missed(summaries)] == ["10,000 idle connections: not held"]
