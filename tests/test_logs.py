"""Structured logs: JSON lines from a real ``twistd --logger`` process, one event per turn."""

from __future__ import annotations

import io
import json
import signal
import subprocess
from pathlib import Path

import pytest_twisted
from twisted.logger import Logger

from livetx.logs import JSONLinesObserver

from .support import connect, replied
from .test_twistd import TWISTD, free_port, run_cli, wait_for_port


def test_events_become_json_lines_with_only_plain_fields() -> None:
    out = io.StringIO()
    log = Logger(namespace="livetx.test", observer=JSONLinesObserver(out))
    log.info("Turn {outcome}", outcome="ok", metrics={"llm_ttft": 0.25}, request=object())
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("Bug in {where}", where="here")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "Turn ok" and first["level"] == "info" and first["namespace"] == "livetx.test"
    assert first["metrics"] == {"llm_ttft": 0.25} and "request" not in first
    assert first["time"].endswith("+00:00")
    assert second["level"] == "critical" and second["error"] == "division by zero"
    assert "ZeroDivisionError" in second["traceback"]


@pytest_twisted.ensureDeferred
async def test_twistd_logs_one_json_event_per_turn(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    process = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", "--logger", "livetx.logs.json_observer", "live",
                  "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(data)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, process)
        token = run_cli("token", "--data-dir", str(data), "--username", "dana", cwd=tmp_path)
        client = await connect(f"ws://127.0.0.1:{port}/api/live_chat/ws?token={token}")
        assert replied(await client.turn("a private remark"))
        assert replied(await client.turn("another one"))
        await client.close_and_wait()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    events = [json.loads(line) for line in output.splitlines()]  # every line is JSON
    turns = [e for e in events if e.get("livetx_event") == "turn"]
    assert len(turns) == 2
    for turn in turns:
        assert turn["outcome"] == "ok" and turn["username"] == "dana" and turn["input_type"] == "text"
        assert turn["end"] >= turn["first_audio"] >= turn["first_delta"] >= 0 and turn["end"] > 0
        assert turn["metrics"]["tts"] == "espeak" and turn["metrics"]["wav_to_tts_total_time"] > 0
    assert token not in output and "private remark" not in output
