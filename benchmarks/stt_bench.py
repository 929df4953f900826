"""Speech-to-text: word error rate and latency of every installed engine, and what a voice turn waits.

Recordings: the project's own phrases (every example in the README and
docs, plus a few sentences) spoken by eSpeak NG, and by Piper when a voice
package is installed; people reading aloud (the ``moonshine-voice``
recordings); ``passages``: eight passages of 12–40 s read by Piper (or
eSpeak NG) with a reader's pauses, each decoded whole (``passages.py``,
the set ``v2v_bench.py --sets passages`` says in talk mode);
``--recordings DIR`` adds any pairs of ``NAME.wav`` and
``NAME.txt`` (a corpus of read speech, your own voice). Engines: Whisper
(the bundled base model), PocketSphinx on open vocabulary, and PocketSphinx
with the documented grammar on the phrases it covers.

    python benchmarks/stt_bench.py                 # accuracy and decode time per engine
    python benchmarks/stt_bench.py --sets passages # the same, on the passages alone
    python benchmarks/stt_bench.py --live 5        # plus a real server: end_speaking → user_msg
    python benchmarks/stt_bench.py --vad           # plus talk mode's detectors on noise and speech
    python benchmarks/stt_bench.py --windows       # Whisper's short windows against 30 s ones

Needs the ``bench`` extra (jiwer, websockets). WER is jiwer's, on lower-case
words without punctuation, numbers spelled out as words.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jiwer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import free_port, rss_mb, wait_for_port  # noqa: E402
from passages import espeak, passages, piper, piper_voice  # noqa: E402

from livetx.audio import as_16k_wav, read_wav, to_wav  # noqa: E402
from livetx.testing.recordings import read_aloud  # noqa: E402

#: Every phrase the README and docs give as something to say, and the four
#: the issue that made Whisper the default tried: each should come back exact.
EXAMPLES = [
    "hello there",                              # README: livetx say
    "what time is it",                          # README: livetx talk; docs/tools.md
    "what time is it in berlin",                # README: tools
    "what is 17 times 23",                      # docs/tools.md
    "what's the weather like",                  # docs/clients.md
    "turn on the kitchen lights",               # docs/configuration.md (the grammar), docs/tools.md
    "turn on the bedroom lights",               # the grammar
    "turn off the kitchen lights",              # the grammar
    "turn off the bedroom lights",              # the grammar
    "turn on the lights",                       # the issue
    "hello world what is the weather today",    # the issue
]
#: Then ordinary requests.
PHRASES = EXAMPLES + [
    "please water the garden tomorrow morning",
    "good morning how are you",
    "set an alarm for seven in the morning",
    "what is the capital of france",
    "play some music in the living room",
    "remind me to call my mother tonight",
    "how far is the moon from the earth",
    "the quick brown fox jumps over the lazy dog",
]
#: More ordinary requests, never used to choose an option: the WER the
#: bench reports for eSpeak is on these too, at three speaking rates, so
#: that 14 phrases do not decide it alone.
MORE = [
    "can you read me the news", "what is on my calendar today", "open the front door",
    "how many days until christmas", "tell me a joke about cats", "call my sister after lunch",
    "is it going to rain this afternoon", "switch off the television", "where did i park the car",
    "order more milk and bread", "what song is playing right now", "how do you spell necessary",
    "send a message to david saying i am late", "what is the weather like in london",
    "add eggs to my shopping list", "how tall is mount everest", "start a timer for ten minutes",
    "who wrote pride and prejudice", "translate thank you into spanish", "lock the back door",
    "what did i miss while i was away", "read my last email", "how do i make pancakes",
    "close the garage door", "what is the population of canada", "play the next episode",
    "turn the volume down a little", "when does the library open", "book a table for two tonight",
    "how long does it take to boil an egg", "tell me something interesting",
    "what is the square root of nine", "find a good italian restaurant nearby", "did anyone call me today",
    "dim the lights in the hall", "what does the word serendipity mean", "cancel my meeting with john",
    "is the store open on sunday", "how old is the universe", "show me pictures of the ocean",
    "i would like a cup of tea", "thank you very much", "can you help me with my homework",
    "where is the nearest train station",
]
RATES = (160, 175, 190)
GRAMMAR = """#JSGF V1.0;
grammar home;
public <command> = (turn on | turn off) the (kitchen | bedroom) lights;
"""
_NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def normal(text: str) -> str:
    words = "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split()
    return " ".join(_NUMBERS[int(w)] if w.isdigit() and int(w) < len(_NUMBERS) else w for w in words)


def recordings(extra: Path | None) -> dict[str, list[tuple[str, bytes]]]:
    """Sets of (reference text, 16 kHz WAV)."""
    sets: dict[str, list[tuple[str, bytes]]] = {}
    sets["espeak"] = [(p, to_wav(espeak(p))) for p in PHRASES]
    sets["espeak, more requests"] = [(p, to_wav(espeak(p, rate))) for rate in RATES for p in MORE]
    read = read_aloud()
    if read:
        sets["read aloud"] = read
    voice = piper_voice()
    if voice is not None:
        sets["piper"] = [(p, to_wav(piper(voice, p))) for p in PHRASES]
    sets["passages"] = [(text, to_wav(pcm)) for text, pcm in passages()]
    if extra is not None:
        sets[extra.name] = [(wav.with_suffix(".txt").read_text().strip(), as_16k_wav(wav.read_bytes()))
                            for wav in sorted(extra.glob("*.wav")) if wav.with_suffix(".txt").exists()]
    return sets


def engines(tmp: Path, windows: bool = False) -> dict[str, Callable[[bytes], str]]:
    """Each installed engine as a blocking call, built the way the server builds it."""
    from livetx.providers import sphinx
    from livetx.providers.base import recognizer_input

    found: dict[str, Callable[[bytes], str]] = {}
    try:
        from livetx.config import STTConfig
        from livetx.providers.whisper import WhisperRecognizer, bundled_model

        recognizer = WhisperRecognizer(STTConfig(language="en"), None, _NoReactor(), cache=tmp)
        bundled_model(tmp)
        found["whisper base (int8)"] = lambda wav: recognizer._decode(wav)
        if windows:  # the same model, every window 30 s long as faster-whisper pads it
            full = WhisperRecognizer(STTConfig(language="en"), None, _NoReactor(), cache=tmp)
            full.shorten_windows = False
            found["whisper base (int8), 30 s windows"] = lambda wav: full._decode(wav)
    except ImportError:
        pass
    grammar = tmp / "home.jsgf"
    grammar.write_text(GRAMMAR)
    open_vocabulary = (("loglevel", "FATAL"), ("samprate", 16000))
    with_grammar = tuple(sorted({"loglevel": "FATAL", "samprate": 16000, "jsgf": str(grammar),
                                 "bestpath": False}.items()))
    found["pocketsphinx"] = lambda wav: sphinx._decode(open_vocabulary, recognizer_input(wav))
    found["pocketsphinx + grammar"] = lambda wav: sphinx._decode(with_grammar, recognizer_input(wav))
    return found


class _NoReactor:
    """Enough of a reactor for a recognizer whose worker this benchmark never starts."""

    def callWhenRunning(self, *args: Any) -> None:
        pass


def accuracy(sets: dict[str, list[tuple[str, bytes]]], tmp: Path, windows: bool = False) -> list[dict[str, Any]]:
    """WER and decode time per engine and set; with ``windows``, Whisper's short windows against 30 s ones."""
    rows = []
    for engine, decode in engines(tmp, windows).items():
        if windows and not engine.startswith("whisper"):
            continue
        decode(next(iter(sets.values()))[0][1])  # loads the model: a server's first voice turn, reported apart
        for name, clips in sets.items():
            if engine.endswith("grammar"):
                clips = [c for c in clips if re.fullmatch(r"turn (on|off) the (kitchen|bedroom) lights", c[0])]
            if not clips:
                continue
            refs, hyps, times = [], [], []
            for text, wav in clips:
                started = time.perf_counter()
                heard = decode(wav)
                times.append(time.perf_counter() - started)
                refs.append(normal(text))
                hyps.append(normal(heard) or "<nothing>")
            right = [r == h for r, h in zip(refs, hyps)]
            rows.append({
                "engine": engine, "set": name, "clips": len(clips), "wer": jiwer.wer(refs, hyps),
                "exact": sum(right), "examples": [ok for (t, _), ok in zip(clips, right) if t in EXAMPLES],
                "median_s": statistics.median(times), "max_s": max(times),
                "misheard": [(r, h) for r, h, ok in zip(refs, hyps, right) if not ok],
            })
    return rows


def early(sets: dict[str, list[tuple[str, bytes]]], names: list[str], tmp: Path) -> list[dict[str, Any]]:
    """Whisper on what talk mode's final decode heard before (the utterance and ``silence_ms`` of
    silence after it) against what the decode at the pause hears (livetx.live.streaming_stt: up
    to PAUSE_MS after the last sound): the words must be the same."""
    from livetx.audio import to_wav
    from livetx.live.streaming_stt import PAUSE_MS

    decode = engines(tmp)["whisper base (int8)"]
    decode(sets["espeak"][0][1])
    rows = []
    for name in names:
        refs, whole, paused = [], [], []
        for text, wav in sets.get(name, []):
            pcm = read_wav(wav)[0]
            loud = [i for i in range(0, len(pcm) - 1, 2) if abs(int.from_bytes(pcm[i:i + 2], "little", signed=True)) > 328]
            speech = pcm[: loud[-1] + 2] if loud else pcm
            preroll = bytes(300 * 32)
            refs.append(normal(text))
            whole.append(normal(decode(to_wav(preroll + speech + bytes(600 * 32)))) or "<nothing>")
            paused.append(normal(decode(to_wav(preroll + speech + bytes(PAUSE_MS * 32)))) or "<nothing>")
        if refs:
            rows.append({"set": name, "clips": len(refs), "wer_after_endpoint": jiwer.wer(refs, whole),
                         "wer_at_pause": jiwer.wer(refs, paused),
                         "different": [(w, p) for w, p in zip(whole, paused) if w != p]})
    return rows


def live(turns: int, sets: dict[str, list[tuple[str, bytes]]]) -> dict[str, Any]:
    """A real ``twistd live`` on its defaults: start-up, idle memory, and end_speaking → user_msg."""
    import asyncio
    import base64
    import json
    import subprocess

    import websockets

    from livetx.auth.tokens import issue_token, load_or_create_secret

    clips = [wav for text, wav in sets["espeak"] if 0.8 <= len(read_wav(wav)[0]) / 32000 <= 3.0]
    with tempfile.TemporaryDirectory() as tmp:
        port, data = free_port(), Path(tmp, "data")
        started = time.monotonic()
        server = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "--logfile", str(Path(tmp, "twistd.log")), "live", "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--data-dir", str(data)])
        try:
            wait_for_port(port)
            startup = time.monotonic() - started
            time.sleep(1.0)
            idle = rss_mb(server.pid)
            url = f"ws://127.0.0.1:{port}/api/live_chat/ws?token=" + issue_token(
                load_or_create_secret(data, None), "bench", 3600)

            async def run() -> list[float]:
                waits = []
                async with websockets.connect(url, max_size=None) as ws:
                    for i in range(turns + 1):
                        pcm = read_wav(clips[i % len(clips)])[0]
                        await ws.send(json.dumps({"t": "start_speaking", "stamp": str(i)}))
                        for at in range(0, len(pcm), 640):
                            chunk = base64.b64encode(pcm[at:at + 640]).decode()
                            await ws.send(json.dumps({"t": "speaking_part", "data": chunk}))
                        sent = time.monotonic()
                        await ws.send(json.dumps({"t": "end_speaking", "stamp": str(i)}))
                        while True:
                            frame = json.loads(await ws.recv())
                            if frame["t"] == "user_msg":
                                waits.append(time.monotonic() - sent)
                            if frame["t"] == "end":
                                break
                return waits

            waits = asyncio.run(run())
            took = [float(line.split(" in ")[1].split(" s")[0]) for line in Path(tmp, "twistd.log").read_text().splitlines()
                    if "Transcribed" in line]
            return {"startup_s": startup, "idle_rss_mb": idle, "first_turn_s": waits[0],
                    "warm_decode_median_s": statistics.median(took[1:]),
                    "warm_median_s": statistics.median(waits[1:]), "warm_max_s": max(waits[1:]),
                    "rss_after_mb": rss_mb(server.pid), "turns": turns}
        finally:
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", type=Path, help="a folder of NAME.wav + NAME.txt pairs to add")
    parser.add_argument("--live", type=int, default=0, metavar="TURNS", help="also time voice turns on a server")
    parser.add_argument("--vad", action="store_true", help="also measure talk mode's detectors")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the WER table")
    parser.add_argument("--sets", action="append", metavar="NAME",
                        help="only this set in the WER table (again for more): espeak, 'espeak, more requests', "
                             "'read aloud', piper, passages")
    parser.add_argument("--early", nargs="?", const="espeak,piper,read aloud", metavar="SETS",
                        help="also compare Whisper's words decoded at the pause with after the endpoint")
    parser.add_argument("--windows", action="store_true",
                        help="Whisper only: its short windows against faster-whisper's 30 s ones, same clips")
    args = parser.parse_args()
    sets = recordings(args.recordings)
    if args.early:
        with tempfile.TemporaryDirectory() as tmp:
            for row in early(sets, args.early.split(","), Path(tmp)):
                print(f"{row['set']}: {row['clips']} clips, WER {100 * row['wer_after_endpoint']:.1f} % decoded after "
                      f"the endpoint, {100 * row['wer_at_pause']:.1f} % at the pause; "
                      f"{len(row['different'])} transcripts differ {row['different']}")
    rows = []
    if not args.no_accuracy:
        with tempfile.TemporaryDirectory() as tmp:
            chosen = {name: sets[name] for name in args.sets} if args.sets else sets
            rows = accuracy(chosen, Path(tmp), args.windows)
    if rows:
        print("| engine | recordings | clips | WER | exact | README/docs examples exact | median decode | slowest |")
        print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        examples = f"{sum(r['examples'])}/{len(r['examples'])}" if r["examples"] else "-"
        print(f"| {r['engine']} | {r['set']} | {r['clips']} | {100 * r['wer']:.1f} % | {r['exact']}/{r['clips']} "
              f"| {examples} | {r['median_s']:.2f} s | {r['max_s']:.2f} s |")
    for r in rows:
        for ref, hyp in r["misheard"]:
            print(f"  {r['engine']} / {r['set']}: {ref!r} → {hyp!r}")
    if args.live:
        result = live(args.live, sets)
        print("\nlive server, defaults (Whisper):", ", ".join(f"{k} {v:.2f}" for k, v in result.items()))
    if args.vad:
        from vad_bench import report  # noqa: PLC0415  (its own module: the detectors' figures)

        report(sets)


if __name__ == "__main__":
    main()
