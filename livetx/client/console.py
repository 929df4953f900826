"""``livetx say`` and ``livetx talk``: a turn on the terminal.

stdout carries the reply text as it streams (or, with ``--json``, every
frame as one JSON line), so a script can read it; what a person looks at
beside it (the transcript heard, the metrics table, errors) goes to stderr.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any, TextIO

from livetx.audio import BYTES_PER_SECOND
from livetx.client.audio import join_chunks, load_speech, player
from livetx.client.progress import SLOW_TRANSCRIPT, Progress
from livetx.client.session import (
    USAGE, ClientError, Trust, TurnReport, TurnRequest, run_turn, socket_address,
)


class Printer:
    """Shows the reply as it arrives: deltas on stdout, or every frame as JSON."""

    def __init__(
        self, out: TextIO, err: TextIO, as_json: bool, voice: bool = False, progress: Progress | None = None
    ) -> None:
        self.out, self.err, self.as_json, self.voice = out, err, as_json, voice
        self.progress = progress

    def frame(self, frame: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.frame(frame)
        if self.as_json:
            self.out.write(json.dumps(frame, ensure_ascii=False) + "\n")
            self.out.flush()
            return
        kind, data = frame.get("t"), frame.get("data")
        if kind == "user_msg" and self.voice and isinstance(data, dict):
            text = data.get("text", "")
            self.err.write(f"heard: {text}\n" if text else "heard nothing\n")
        elif kind == "bot_delta_chunk" and isinstance(data, dict):
            self.out.write(str(data.get("text", "")))
            self.out.flush()  # rendered live on a terminal
        elif kind == "stop_play":
            self.out.write(" [interrupted]")


def metrics_table(report: TurnReport) -> str:
    """The turn's metrics, server-reported and measured here, as aligned rows."""
    rows = [(f"client {name.replace('_', ' ')} after input end", _value(seconds))
            for name, seconds in report.timings.items()]
    rows += [(name, _value(value)) for name, value in report.metrics.items()]
    rows.append(("audio chunks", str(len(report.audio))))
    width = max(len(name) for name, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value * 1000:.0f} ms"
    return str(value)


def waiting(clock: Any, err: TextIO, request: TurnRequest) -> Progress | None:
    """A progress line for a voice turn, which may wait seconds; a text turn gets a spinner on a terminal only."""
    if request.pcm is not None:
        return Progress(clock, err, f"sent {len(request.pcm) / BYTES_PER_SECOND:.1f} s of speech, transcribing",
                        slow=SLOW_TRANSCRIPT)
    if getattr(err, "isatty", lambda: False)():
        return Progress(clock, err, "waiting for the reply")
    return None


def turn_request(options: Any) -> TurnRequest:
    """The turn the options ask for; reading the WAV here makes a bad file a usage error."""
    common = {"interrupt_after": options["interrupt-after"], "timeout": options["timeout"]}
    if options.get("wav") is None:
        return TurnRequest(text=options["text"], **common)
    try:
        pcm = load_speech(Path(options["wav"]))
    except ValueError as e:
        raise ClientError(USAGE, f"--wav: {e}") from None
    return TurnRequest(pcm=pcm, realtime=options["realtime"], **common)


async def run(reactor: Any, options: Any, out: TextIO, err: TextIO) -> int:
    """Run the turn the parsed ``say``/``talk`` options describe; returns the exit code."""
    try:
        url, headers = socket_address(
            options["url"], options["token"], options["api-key"], options["username"]
        )
        request = turn_request(options)
        trust = Trust(cafile=options.get("cafile"), insecure=bool(options.get("insecure")))
        if trust.insecure and url.startswith("wss:"):
            err.write("livetx: WARNING: --insecure: the server's certificate is not checked; "
                      "anyone on the path can read and change this conversation\n")
        progress = waiting(reactor, err, request)
        printer = Printer(out, err, options["json"], voice=request.pcm is not None, progress=progress)
        try:
            report = await run_turn(reactor, url, headers, request, printer, trust)
        finally:
            if progress is not None:
                progress.stop()
    except ClientError as e:
        err.write(f"livetx: {e.message}\n")
        return e.exit_code
    if not options["json"]:
        out.write("\n")
        err.write(metrics_table(report))
    if report.error is not None:
        err.write(f"livetx: server error {report.error[0]}: {report.error[1]}\n")
    save_audio(report, options, err)
    return report.exit_code


def save_audio(report: TurnReport, options: Any, err: TextIO) -> None:
    """Write the reply audio to ``--out``, and play it with ``--play`` when a player exists."""
    path = options["out"]
    if path is None and not options["play"]:
        return
    audio = join_chunks(report.audio)
    if path is not None:
        Path(path).write_bytes(audio)
    if not options["play"] or not audio:
        return
    command = player()
    if command is None:
        err.write("livetx: no audio player found (paplay, aplay or ffplay); use --out FILE\n")
        return
    with tempfile.TemporaryDirectory() as scratch:
        if path is None:
            path = str(Path(scratch) / "reply.wav")
            Path(path).write_bytes(audio)
        subprocess.run([*command, str(path)], check=False)

