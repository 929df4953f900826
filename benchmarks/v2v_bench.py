"""Voice to voice: talk mode at real time on the default install, stage by stage.

A client streams a microphone at real time (20 ms ``speaking_part`` frames,
silence included) with ``turn_detection=server`` to livetx on its defaults
(the offline echo model, eSpeak NG, Whisper base). For each request it notes,
from where the speech really ended in the stream (the last sample above
-40 dBFS), when ``speech_stopped``, ``user_msg`` and the first ``response``
arrived. That end is on the stream's timeline, as a microphone has it: each
20 ms frame goes out once its 20 ms are over, frames are timed as they
arrive (not when the sender next looks), and if the client fell behind the
stream on a busy machine, the time from the end is counted from when the
frame holding it went out (``client_lag_ms``). It also reads the server's own stages from the turn's ``metrics``
(measured from the last voiced frame: endpoint, transcript, first token,
first audio, voice to voice). The sets:

- ``short``: short requests rendered by eSpeak NG and, when installed, Piper;
- ``read``: people reading aloud (the ``moonshine-voice`` recordings);
- ``passages``: eight longer passages (12–40 s) read aloud by Piper or, without
  it, eSpeak NG, with a reader's pauses at commas and between sentences
  (``passages.py``); each is one request, as a ``read`` recording is. Not in
  the default ``--sets``: it takes about 4.3 minutes a rule;
- ``pause``: requests with a mid-sentence pause of 900 ms ("please call my
  sister … at seven in the evening"), which must stay one request.

Then the ``--echo`` sets are said again while each reply, as it plays, is
fed back into the microphone 200 ms late at -10 dB with a little noise, as
a loudspeaker would: the ``speech_started`` frames that come while a reply
plays are false barge-ins.

Each configuration runs in turn, on the same machine in the same minutes:
``silence``, ``transcript`` (the transcript's cues) and ``semantic``
(``end_of_turn: semantic``, when the ``turn`` extra is installed) and, with ``--base DIR``,
the same default server from another checkout with the first rule (the
floor the ratios are taken to; without it, the first rule is). ``--rounds N`` takes turns N times
and pools each configuration's requests, so load from other work on the
machine falls on every configuration alike.

``--speculative MODELS`` compares the speculative reply (``speculative``
off, then on, on one server) instead, for each model named: ``echo`` (the
offline default) and ``hosted`` (the fake OpenAI-compatible service with a
first token ``--first-delay`` seconds after the request, as a hosted model
answers), with the first of ``--rules``; the ratios are to ``off`` with the
same model. It counts the replies committed and discarded (begun at a pause
the person spoke on after).

    PYTHONPATH=. python benchmarks/v2v_bench.py                       # every set, every rule
    PYTHONPATH=. python benchmarks/v2v_bench.py --base /work/main     # and ratios to that checkout
    PYTHONPATH=. python benchmarks/v2v_bench.py --sets short,pause --short 6
    PYTHONPATH=. python benchmarks/v2v_bench.py --sets passages --rules transcript --echo ""
    PYTHONPATH=. python benchmarks/v2v_bench.py --speculative echo,hosted --first-delay 0.4

Needs the ``bench`` extra (websockets); moonshine-voice and a Piper voice are optional.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import json
import os
import random
import subprocess
import sys
import time
from collections import deque
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import jiwer
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import free_port, local_server, wait_for_port  # noqa: E402
from live_scenarios import percentile  # noqa: E402
from passages import QUIET, espeak, passages, piper, piper_voice  # noqa: E402
from stt_bench import MORE, PHRASES, normal  # noqa: E402

from livetx.audio import BYTES_PER_SECOND, read_wav, resample  # noqa: E402
from livetx.live.echo import MAX_DELAY_MS  # noqa: E402
from livetx.testing.recordings import read_aloud  # noqa: E402

FRAME_BYTES = 640  # 20 ms
#: What the client saw, from the real end of speech.
MARKS = ("speech_stopped", "user_msg", "response")
#: What the server measured, from the last voiced frame (livetx.live.events.VOICE_STAGES).
STAGES = ("endpoint_ms", "transcript_ms", "first_token_ms", "first_audio_ms", "voice_to_voice_ms")
#: Speculative replies committed and discarded, as the turns' metrics count them (SPECULATION_KEYS).
SPECULATIONS = ("speculations_committed", "speculations_discarded")
#: Requests in two breaths: the first half, then the rest after a pause of PAUSE_MS.
PAUSED = [
    ("please call my sister", "at seven in the evening"),
    ("book a table for two", "at the italian place"),
    ("remind me to buy", "milk and eggs tomorrow"),
    ("what is the weather like", "in berlin this weekend"),
]
PAUSE_MS = 900
#: The loudspeaker's echo: this late, this much quieter, over noise this loud (samples).
ECHO_DELAY_MS, ECHO_GAIN, NOISE = 200, 10 ** (-10 / 20), 60
#: Silence after each request, before the next one starts.
AFTER_MS = 2500


def speech_end(pcm: bytes) -> float:
    """Seconds to the last sample above -40 dBFS: where the speech really ends."""
    samples = array.array("h", pcm)
    return (max(i for i, s in enumerate(samples) if abs(s) > QUIET) + 1) / (BYTES_PER_SECOND // 2)


def requests(sets: list[str], short: int) -> list[tuple[str, str, bytes]]:
    """(set, the words said, 16 kHz PCM) for every request to make."""
    made: list[tuple[str, str, bytes]] = []
    if "short" in sets:
        phrases = (PHRASES + MORE)[::3][:short]
        made += [("short", text, espeak(text)) for text in phrases]
        voice = piper_voice()
        if voice is not None:
            made += [("short", text, piper(voice, text)) for text in phrases[: short // 2]]
    if "pause" in sets:
        made += [("pause", f"{head} {tail}", espeak(head) + bytes(PAUSE_MS * 32) + espeak(tail))
                 for head, tail in PAUSED]
    if "read" in sets:
        for text, wav in read_aloud():
            pcm, sample_rate = read_wav(wav)
            made.append(("read", text, resample(pcm, sample_rate)))
    if "passages" in sets:
        made += [("passages", text, pcm) for text, pcm in passages()]
    return made


class Microphone:
    """What the client sends: the user's audio plus (``echo``) the echo of the replies, with noise."""

    def __init__(self, echo: bool) -> None:
        self._feedback = echo
        self._echo = array.array("h")
        self._random = random.Random(7)
        #: Stream position (samples) where the reply audio heard so far ends.
        self.playing_until = 0

    def play(self, wav: bytes, at: int) -> None:
        """A reply's audio starts playing when the last one ends (or now), and echoes back late."""
        pcm, sample_rate = read_wav(wav)
        samples = array.array("h", resample(pcm, sample_rate) if self._feedback else b"")
        start = max(at, self.playing_until) + ECHO_DELAY_MS * 16
        self.playing_until = start + len(samples)
        if len(self._echo) < self.playing_until:
            self._echo.extend([0] * (self.playing_until - len(self._echo)))
        for i, sample in enumerate(samples):
            self._echo[start + i] += int(sample * ECHO_GAIN)

    def frame(self, user: bytes, position: int) -> bytes:
        out = array.array("h", user.ljust(FRAME_BYTES, b"\0"))
        for i in range(len(out)):
            echo = self._echo[position + i] if position + i < len(self._echo) else 0
            out[i] = max(-32768, min(32767, out[i] + echo + int(self._random.gauss(0, NOISE))))
        return out.tobytes()


async def converse(
    url: str, rule: str, made: list[tuple[str, str, bytes]], echo: bool, **settings: Any,
) -> list[dict[str, Any]]:
    """Say every request in turn, in real time, on one connection; what each one measured.

    A request's turn is the first one numbered after the last request's; later ones
    (speech the echo started) count as false barge-ins, not as its words."""
    results: list[dict[str, Any]] = []
    async with websockets.connect(url, max_size=None) as ws:
        update: dict[str, Any] = {"t": "session_update", "turn_detection": "server", "end_of_turn": rule}
        update.update(settings)  # more session settings (--speculative: speculative, silence_ms)
        await ws.send(json.dumps(update))
        while True:
            frame = json.loads(await ws.recv())
            if frame["t"] == "error":
                raise RuntimeError(f"server refused {update}: {frame}")
            if frame["t"] == "session_updated":
                break
        mic = Microphone(echo)
        position = 0  # samples sent so far
        last_turn = 0
        start = time.perf_counter()
        received: deque[tuple[float, dict[str, Any]]] = deque()
        reader = asyncio.create_task(arrivals(ws, start, received))
        for index, (group, text, pcm) in enumerate([made[0], *made]):  # the first one warms up
            audio = bytes(BYTES_PER_SECOND * 3 // 10) + pcm + bytes(AFTER_MS * 32)
            # The end of speech on the stream's timeline, as seconds since ``start`` at which a
            # microphone has it: the client sends each frame once its 20 ms are over, and if it
            # fell behind the stream (a busy machine), the frame holding the end goes out late.
            spoken = position / 16000 + 0.3 + speech_end(pcm)
            lag = 0.0
            seen: dict[str, float] = {}
            stages: dict[str, float] = {}
            said: dict[int, str] = {}
            started = barge = stops = 0
            sent = 0
            # The next request waits for the reply's echo to die away: the echo model says the
            # request's own words back, and a request heard over their echo is dropped as echo.
            while sent < len(audio) or "end" not in seen or position < mic.playing_until + MAX_DELAY_MS * 16:
                chunk = audio[sent : sent + FRAME_BYTES]
                await asyncio.sleep(max(0.0, start + (position + FRAME_BYTES // 2) / 16000 - time.perf_counter()))
                late = time.perf_counter() - start - (position + FRAME_BYTES // 2) / 16000
                if position / 16000 < spoken <= (position + FRAME_BYTES // 2) / 16000:
                    lag = late  # the server could not hear the end before this
                await ws.send(json.dumps({"t": "speaking_part",
                                          "data": base64.b64encode(mic.frame(chunk, position)).decode()}))
                sent += FRAME_BYTES
                position += FRAME_BYTES // 2
                if reader.done():
                    reader.result()  # the connection closed: say why
                while received:
                    now, frame = received.popleft()
                    kind, ends = frame["t"], spoken + lag
                    stops += kind == "stop_play"  # a reply begun too soon: the speaker went on
                    if kind == "speech_started":
                        started += 1
                        barge += position < mic.playing_until and "response" in seen
                    if kind in MARKS and kind not in seen and now > ends - 0.3:
                        seen[kind] = (now - ends) * 1000
                    if kind == "response":
                        mic.play(base64.b64decode(frame["data"]), position)
                    if kind == "user_msg" and frame["turn"] > last_turn:
                        said[frame["turn"]] = frame["data"]["text"]
                    if kind == "metrics":
                        stages.update({k: v for k, v in frame["data"].items() if k in STAGES})
                        for key in set(SPECULATIONS) & frame["data"].keys():
                            stages[key] = stages.get(key, 0) + frame["data"][key]
                    if kind == "end":
                        seen["end"] = now
                if sent > len(audio) + 90 * BYTES_PER_SECOND:  # the first loads Whisper
                    raise RuntimeError(f"no end 90 s after {text!r}; saw {sorted(seen)}")
            last_turn = max([last_turn, *said])
            if index == 0:
                continue
            # The request's turn, as its last user_msg has it; a request in two breaths must be
            # one turn whose text begins and ends as the request does.
            heard = normal(said[min(said)]) if said else ""
            said_words, heard_words = normal(text).split(), heard.split()
            cut = group == "pause" and not (said_words[0] in heard_words[:3] and heard_words[-1:] == said_words[-1:])
            results.append({"set": group, "text": text, "heard": heard, **seen, "stages": stages,
                            "turns": len(said), "cut": cut, "client_lag_ms": round(lag * 1000, 1), "stop_play": stops,
                            "echo_barge_ins": barge, "started": started})
        reader.cancel()
    return results


async def arrivals(ws: Any, start: float, into: deque[tuple[float, dict[str, Any]]]) -> None:
    """Note each frame from the server as it arrives, with when (seconds since ``start``): the
    sender sleeps between frames, and would otherwise see a frame up to 20 ms late."""
    async for message in ws:
        into.append((time.perf_counter() - start, json.loads(message)))


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for group in sorted({r["set"] for r in results}):
        rows = [r for r in results if r["set"] == group]
        figures: dict[str, Any] = {
            "requests": len(rows), "cut_in_two": sum(r["cut"] for r in rows),
            "stop_play": sum(r["stop_play"] for r in rows),
            "wer": round(100 * jiwer.wer([normal(r["text"]) for r in rows], [r["heard"] or "-" for r in rows]), 1),
        }
        for mark in MARKS:
            values = [r[mark] for r in rows if mark in r]
            if values:
                figures[mark] = _spread(values)
        for stage in STAGES:
            values = [r["stages"][stage] for r in rows if stage in r["stages"]]
            if values:
                figures[stage] = _spread(values)
        figures["client_lag_ms"] = _spread([r["client_lag_ms"] for r in rows])
        for key in SPECULATIONS:
            figures[key] = sum(r["stages"].get(key, 0) for r in rows)
        summary[group] = figures
    return summary


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(percentile(ordered, 0.5), 1), "p95": round(percentile(ordered, 0.95), 1),
            "max": round(ordered[-1], 1)}


@contextmanager
def checkout(path: str | None) -> Iterator[None]:
    """Run the server (a child process) from another checkout's code."""
    before, directory = os.environ.get("PYTHONPATH"), os.getcwd()
    if path is not None:  # twistd runs with the working directory first on its path
        os.environ["PYTHONPATH"] = path
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(directory)
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def print_table(name: str, summary: dict[str, Any], floor: dict[str, Any] | None) -> None:
    print(f"\n== {name}")
    for group, figures in summary.items():
        if group == "echo":
            print(f"echo fed back on {figures['requests']} requests: {figures['false_barge_ins']} false barge-ins, "
                  f"{figures['speech_started']} speech_started for {figures['requests']} requests said")
            continue
        print(f"{group}: {figures['requests']} requests, WER {figures['wer']} %, {figures['cut_in_two']} cut in two, "
              f"{figures['stop_play']} replies stopped as the speaker went on"
              + (f", speculative replies {figures['speculations_committed']} committed, "
                 f"{figures['speculations_discarded']} discarded" if any(figures.get(k) for k in SPECULATIONS) else ""))
        for key in (*MARKS, *STAGES, "client_lag_ms"):
            if key in figures:
                row = figures[key]
                ratio = ""
                base = (floor or {}).get(group, {}).get(key)
                if base:
                    ratio = f"   ({row['p50'] / base['p50']:.2f}x the first's p50)" if base["p50"] > 0 else ""
                print(f"  {key:18} p50 {row['p50']:8.1f}  p95 {row['p95']:8.1f}  max {row['max']:8.1f}{ratio}")


def echo_check_cost(rounds: int = 200) -> dict[str, float]:
    """CPU of the echo guard per onset heard while a reply plays, against Silero's per second of audio.

    Measured in this process, in the same minute: the guard's one FFT
    correlation of a 300 ms onset against 1.1 s of reference, and the
    detector every talk-mode connection runs anyway (Silero, 31 frames a second).
    """
    from livetx.live.echo import EchoGuard
    from livetx.live.silero import silero_vad
    from livetx.audio import to_wav

    reply = espeak("the first thing is this and the second thing is that")
    guard = EchoGuard(lambda: 0)
    guard.audio_sent(to_wav(reply))
    onset = reply[16000:16000 + 9600]
    started = time.process_time()
    for _ in range(rounds):
        guard.is_echo(onset, 1000)
    per_onset = (time.process_time() - started) / rounds * 1000
    is_speech, frame = silero_vad()
    second = reply[: BYTES_PER_SECOND // frame * frame]
    started = time.process_time()
    for _ in range(rounds // 10):
        for i in range(0, len(second), frame):
            is_speech(second[i : i + frame])
    per_second = (time.process_time() - started) / (rounds // 10) * 1000
    return {"echo_check_ms_per_onset": round(per_onset, 2), "silero_ms_per_second": round(per_second, 2),
            "ratio": round(per_onset / per_second, 2)}


@contextmanager
def hosted_model(first_delay: float) -> Iterator[str]:
    """The fake OpenAI-compatible service answering a short reply, its first token ``first_delay`` s after
    the request; yields the ``[llm]`` section that points livetx at it (speech stays on the defaults)."""
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "livetx.testing.openai_server", "--port", str(port), "--tokens", "12",
         "--sentences", "2", "--delay", "0.02", "--first-delay", str(first_delay)], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f'[llm]\nprovider = "openai"\nbase_url = "http://127.0.0.1:{port}/v1"\nmodel = "sim"\n'
    finally:
        sim.terminate()
        sim.wait()


def speculative_runs(
    models: list[str], first_delay: float, made: list[tuple[str, str, bytes]], silence_ms: int, rule: str,
) -> dict[str, Any]:
    """Each model's server, said the requests with ``speculative`` off, on, on and off again (so a machine
    that gets busier or quieter meanwhile weighs on both alike), in the same minutes."""
    runs: dict[str, Any] = {}
    for model in models:
        llm = hosted_model(first_delay) if model == "hosted" else nullcontext("")
        with llm as config, local_server(offline=True, config_extra=config) as (url, _, _):
            for on in (False, True, True, False):
                results = asyncio.run(converse(url, rule, made, echo=False, speculative=on,
                                               silence_ms=silence_ms))
                name = f"{model} model, speculative {'on' if on else 'off'}"
                runs.setdefault(name, {"results": []})["results"] += results
    for run in runs.values():
        run["summary"] = summarize(run["results"])
    return dict(sorted(runs.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="short,pause,read", help="comma-separated: short, pause, read, passages (not by default: ~4.3 min a rule)")
    parser.add_argument("--short", type=int, default=8, help="short requests per voice")
    parser.add_argument("--rules", default="silence,transcript,semantic",
                        help="comma-separated end_of_turn rules: silence, transcript, semantic")
    parser.add_argument("--base", help="also run the default server from this checkout (the floor for ratios)")
    parser.add_argument("--echo", default="short", help="the sets said again with the replies' echo fed back")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the configurations this many times, taking turns, and pool each one's "
                             "requests: load that drifts over the minutes falls on all of them alike")
    parser.add_argument("--speculative", help="instead: speculative reply off and on, for these models: echo, hosted")
    parser.add_argument("--first-delay", type=float, default=0.4, help="the hosted model's time to first token")
    parser.add_argument("--silence-ms", type=int, default=600, help="--speculative: the sessions' silence_ms")
    args = parser.parse_args()
    made = requests(args.sets.split(","), args.short)
    if args.speculative:
        runs = speculative_runs(args.speculative.split(","), args.first_delay, made, args.silence_ms,
                                args.rules.split(",")[0])
        for name, run in runs.items():
            off = runs[name.replace("speculative on", "speculative off")]
            print_table(name, run["summary"], off["summary"] if off is not run else None)
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=2))
        return
    runs: dict[str, Any] = {}
    plan = [(f"this checkout, end of turn: {rule}", None, rule) for rule in args.rules.split(",")]
    if args.base:
        first = args.rules.split(",")[0]  # the same rule: the ratios are then the change's alone
        plan.insert(0, (f"base {args.base}, end of turn: {first}", args.base, first))
    echoed = [request for request in made if request[0] in args.echo.split(",")]
    pooled: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {name: ([], []) for name, _, _ in plan}
    for _ in range(args.rounds):
        for name, path, rule in plan:
            results, with_echo = pooled[name]
            with checkout(path), local_server(offline=True) as (url, _, _):
                results += asyncio.run(converse(url, rule, made, echo=False))
                if echoed:  # the same requests with a loudspeaker: only the false barge-ins count
                    with_echo += asyncio.run(converse(url, rule, echoed, echo=True))
    for name, (results, with_echo) in pooled.items():
        runs[name] = {"summary": summarize(results), "results": results}
        if echoed:
            runs[name]["summary"]["echo"] = {"requests": len(with_echo),
                                              "false_barge_ins": sum(r["echo_barge_ins"] for r in with_echo),
                                              "speech_started": sum(r["started"] for r in with_echo)}
    cost = echo_check_cost()
    print(f"echo guard: {cost['echo_check_ms_per_onset']} ms of CPU per onset heard while a reply plays; "
          f"Silero, which every talk-mode connection runs, {cost['silero_ms_per_second']} ms per second of "
          f"audio ({cost['ratio']}x)")
    runs["echo_check_cost"] = cost
    floor = runs[plan[0][0]]["summary"]  # the base, or else the first rule
    for name, run in runs.items():
        if name == "echo_check_cost":
            continue
        print_table(name, run["summary"], floor if name != plan[0][0] else None)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
