"""Talk mode: from the end of the user's speech to the first audio of the reply.

A client streams a microphone in real time (20 ms ``speaking_part`` frames,
silence included) with ``turn_detection=server``; the utterance is English
speech from eSpeak NG. For each turn it notes when the speech really ended
in the stream and when ``speech_stopped``, ``user_msg`` and the first
``response`` arrived. The detector must wait ``silence_ms`` before it may
decide, so the figure that matters is what comes *beyond* that window:
detector hangover, transcription, the model and the first sentence of speech.
With ``--barge-ins N`` it then says the sentence again N times over the
reply, 300 ms after its first audio, and times the barge-in from the first
audible sample of the speech over it (as ``calls_bench.py`` times ``clear``)
to the frame that tells the client to stop playing: ``stop_play`` while the
turn runs, ``speech_started`` once the reply is sent whole.

    python benchmarks/talk_bench.py --turns 5 --offline        # echo model, eSpeak NG, PocketSphinx
    python benchmarks/talk_bench.py --turns 5                  # the OpenAI-compatible simulator as model and voice
    python benchmarks/talk_bench.py --binary --silence-ms 400  # binary audio transport, shorter window
    python benchmarks/talk_bench.py --offline --barge-ins 4    # and 4 barge-ins over the reply

Needs ``pip install websockets`` (the ``bench`` extra). It reuses the server
start-up of ``live_bench.py``, whose simulator answers every speech request
with a short tone; transcription is always the server's default PocketSphinx.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import local_server  # noqa: E402
from live_scenarios import percentile  # noqa: E402

from livetx.audio import BYTES_PER_SECOND, duration_ms, read_wav, resample  # noqa: E402
from livetx.providers.espeak import _speak  # noqa: E402  (the engine livetx speaks with)

FRAME_BYTES = 640  # 20 ms
MARKS = ("speech_stopped", "user_msg", "response")
SENTENCE = "please turn on the kitchen lights and close the door"


def utterance() -> tuple[bytes, float, float]:
    """16 kHz PCM of the sentence, and where its first and last audible samples are (seconds)."""
    pcm, rate = read_wav(_speak(("en-us", 175, 50), SENTENCE))
    pcm = resample(pcm, rate)
    audible = [i for i, s in enumerate(array.array("h", pcm)) if abs(s) > 300]
    return pcm, audible[0] / (BYTES_PER_SECOND // 2), (audible[-1] + 1) / (BYTES_PER_SECOND // 2)


async def talk_turn(ws: Any, pcm: bytes, speech: tuple[float, float], binary: bool,
                    over_reply: bool = False) -> dict[str, float]:
    """Stream silence, the utterance and silence in real time until the turn ends; ``over_reply``:
    the utterance again 300 ms after the reply's first audio, timing the barge-in from its onset."""
    speech_starts, speech_ends = speech
    lead = bytes(BYTES_PER_SECOND * 3 // 10)
    audio = lead + pcm
    seen: dict[str, float] = {}
    done = asyncio.Event()
    start = time.perf_counter()
    end_of_speech = start + len(lead) / BYTES_PER_SECOND + speech_ends
    stopped = 0
    replied: float | None = None  # when the first reply audio came (over_reply)
    barge: float | None = None  # when the speech over the reply becomes audible

    async def listen() -> None:
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                seen["reply_s"] = seen.get("reply_s", 0.0) + len(message) / BYTES_PER_SECOND
                continue  # the audio after a binary response header
            frame = json.loads(message)
            kind = frame["t"]
            if kind == "response" and isinstance(frame.get("data"), str):
                seen["reply_s"] = seen.get("reply_s", 0.0) + (duration_ms(base64.b64decode(frame["data"])) or 0) / 1000
            if kind == "error":
                raise RuntimeError(f"server error: {frame}")
            now = time.perf_counter()
            if kind in MARKS and kind not in seen:
                seen[kind] = (now - end_of_speech) * 1000
            nonlocal replied, stopped
            if kind == "response" and replied is None:
                replied = now
            if kind in ("stop_play", "speech_started") and barge is not None and "barge_in" not in seen:
                seen["barge_in"] = (now - barge) * 1000
            stopped += kind == "speech_stopped"
            if kind == "end" and stopped >= 1 + over_reply:
                done.set()
                return

    listener = asyncio.ensure_future(listen())
    silence = bytes(FRAME_BYTES)
    sent = 0

    async def send(chunk: bytes) -> None:
        """20 ms of the microphone, in real time."""
        nonlocal sent
        sent += FRAME_BYTES
        if binary:
            await ws.send(chunk)
        else:
            await ws.send(json.dumps({"t": "speaking_part", "data": base64.b64encode(chunk).decode()}))
        await asyncio.sleep(max(0.0, start + sent / BYTES_PER_SECOND - time.perf_counter()))

    while not done.is_set():
        if listener.done():
            listener.result()  # raises the server's error
        if over_reply and barge is None and replied is not None and time.perf_counter() >= replied + 0.3:
            audio = audio[:sent].ljust(sent, b"\0") + pcm
            barge = start + sent / BYTES_PER_SECOND + speech_starts
        await send(audio[sent : sent + FRAME_BYTES] if sent < len(audio) else silence)
        if time.perf_counter() - end_of_speech > 30:
            raise RuntimeError(f"no complete turn 30 s after speech ended; saw {sorted(seen)}")
    await listener
    # The user hears the reply out before speaking again, the microphone open (the server places the
    # reply on the microphone's timeline: speech over it that matches it is taken for its echo).
    heard = sent + int((seen.pop("reply_s", 0.0) + 0.3) * BYTES_PER_SECOND)
    while sent < heard:
        await send(silence)
    return seen


async def measure(url: str, turns: int, silence_ms: int, binary: bool, barge_ins: int = 0) -> dict[str, Any]:
    pcm, *speech = utterance()
    timeline = (speech[0], speech[1])
    results: list[dict[str, float]] = []
    async with websockets.connect(url, max_size=None) as ws:
        update = {"t": "session_update", "turn_detection": "server", "silence_ms": silence_ms}
        if binary:
            update["audio_transport"] = "binary"
        await ws.send(json.dumps(update))
        while json.loads(await ws.recv())["t"] != "session_updated":
            pass
        await talk_turn(ws, pcm, timeline, binary)  # warm-up: models load on first use
        for _ in range(turns):
            results.append(await talk_turn(ws, pcm, timeline, binary))
        barges = []
        for _ in range(barge_ins):
            seen = await talk_turn(ws, pcm, timeline, binary, over_reply=True)
            if "barge_in" not in seen:
                raise RuntimeError(f"speech over the reply did not stop it; saw {sorted(seen)}")
            barges.append(seen["barge_in"])
    summary: dict[str, Any] = {"turns": len(results), "silence_ms": silence_ms, "binary": binary}
    for mark in MARKS:
        values = [r[mark] for r in results if mark in r]
        if values:
            summary[mark] = {"median_ms": statistics.median(values), "p95_ms": percentile(values, 0.95)}
    if barges:  # from the first audible sample of the speech over the reply
        summary["barge_in"] = {"median_ms": statistics.median(barges), "p95_ms": percentile(barges, 0.95),
                                "max_ms": max(barges), "n": len(barges)}
    return summary


def print_table(summary: dict[str, Any]) -> None:
    window = summary["silence_ms"]
    print(f"\n{summary['turns']} talk-mode turns, silence window {window} ms, "
          f"{'binary' if summary['binary'] else 'JSON'} audio (ms after the speech really ended)")
    print(f"{'frame':16} {'median':>9} {'p95':>9} {'beyond window (median)':>24}")
    for mark in MARKS:
        if mark in summary:
            row = summary[mark]
            print(f"{mark:16} {row['median_ms']:9.1f} {row['p95_ms']:9.1f} {row['median_ms'] - window:24.1f}")
    if "barge_in" in summary:
        row = summary["barge_in"]
        print(f"\n{row['n']} barge-ins: stop_play or speech_started {row['median_ms']:.1f} ms median, "
              f"{row['p95_ms']:.1f} p95, {row['max_ms']:.1f} max, after the first audible sample over the reply")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an existing Live API socket URL (skip starting livetx)")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--silence-ms", type=int, default=600)
    parser.add_argument("--binary", action="store_true", help="send and receive audio as binary messages")
    parser.add_argument("--offline", action="store_true", help="livetx on its defaults: echo model, eSpeak NG")
    parser.add_argument("--barge-ins", type=int, default=0, help="then speak over the reply this many times")
    parser.add_argument("--json", help="also write the summary to this file")
    args = parser.parse_args()
    if args.url:
        summary = asyncio.run(measure(args.url, args.turns, args.silence_ms, args.binary, args.barge_ins))
    else:
        with local_server(tokens=20, sentences=2, delay=0.0, offline=args.offline) as (url, _, _):
            summary = asyncio.run(measure(url, args.turns, args.silence_ms, args.binary, args.barge_ins))
    print_table(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
