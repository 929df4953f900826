"""Talk mode's detectors: false starts on non-speech, missed speech, and CPU per frame.

Run alone, or through ``stt_bench.py --vad``; both take the same speech
recordings (eSpeak, Piper, and ``--recordings DIR``):

    python benchmarks/vad_bench.py --recordings DIR

Each detector drives livetx's own :class:`VoiceDetector` with the default
talk-mode settings; a false start is a ``speech_started`` on a signal with
no speech in it (ten seconds each of white noise at four levels, clicks,
and a tone melody with harmonics), a miss a recording with speech in it
that never starts an utterance.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy

from livetx.audio import SAMPLE_RATE, read_wav
from livetx.live.settings import Settings
from livetx.live.silero import silero_vad
from livetx.live.vad import VoiceDetector, pocketsphinx_vad

Classifier = tuple[Callable[[bytes], bool], int]


def detectors() -> dict[str, Callable[[], Classifier]]:
    settings = Settings()
    return {
        f"WebRTC (aggressiveness {settings.vad_aggressiveness})": lambda: pocketsphinx_vad(settings.vad_aggressiveness),
        "WebRTC (aggressiveness 3)": lambda: pocketsphinx_vad(3),
        "Silero": silero_vad,
    }


def _pcm(samples: Any) -> bytes:
    return bytes(numpy.clip(samples, -32768, 32767).astype("<i2").tobytes())


def non_speech(seconds: float = 10.0) -> dict[str, bytes]:
    rng = numpy.random.default_rng(7)
    n = int(seconds * SAMPLE_RATE)
    signals = {f"white noise {db} dBFS": _pcm(rng.standard_normal(n) * 32768 * 10 ** (db / 20))
               for db in (-50, -40, -30, -20)}
    clicks = numpy.zeros(n)
    for at in range(SAMPLE_RATE // 4, n - 80, SAMPLE_RATE // 2):  # a click every half second
        clicks[at : at + 80] = rng.standard_normal(80) * 20000 * numpy.exp(-numpy.arange(80) / 12)
    signals["clicks, 2 a second"] = _pcm(clicks)
    t = numpy.arange(int(0.25 * SAMPLE_RATE)) / SAMPLE_RATE
    notes = []
    for _ in range(int(seconds / 0.25)):
        f = 220 * 2 ** (int(rng.integers(0, 24)) / 12)
        note = sum(numpy.sin(2 * numpy.pi * f * k * t) / k for k in (1, 2, 3, 4))
        notes.append(note * numpy.minimum(1, (0.25 - t) * 40) * 6000)
    signals["tone melody with harmonics"] = _pcm(numpy.concatenate(notes))
    return signals


class _Count:
    def __init__(self) -> None:
        self.starts = 0
        self.speech_bytes = 0

    def speech_started(self, pcm: bytes, start_ms: int) -> None:
        self.starts += 1
        self.speech_bytes += len(pcm)

    def speech_audio(self, pcm: bytes) -> None:
        self.speech_bytes += len(pcm)

    def speech_stopped(self, end_ms: int) -> None:
        pass


class _Clock:
    """The detector only needs its stall timer; streams here never stall."""

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any) -> Any:
        return _Call()

    def seconds(self) -> float:
        return 0.0


class _Call:
    def active(self) -> bool:
        return True

    def reset(self, delay: float) -> None:
        pass

    def cancel(self) -> None:
        pass


def starts(make: Callable[[], Classifier], pcm: bytes) -> tuple[int, float, float]:
    """Utterances the detector starts on ``pcm``, the seconds it passes on as
    speech, and its classifying time per second of audio."""
    listener = _Count()
    detector = VoiceDetector(Settings(), _Clock(), listener, make())  # type: ignore[arg-type]
    began = time.perf_counter()
    for at in range(0, len(pcm), 640):  # 20 ms frames, as a microphone sends them
        detector.feed(pcm[at : at + 640])
    seconds = len(pcm) / 2 / SAMPLE_RATE
    return listener.starts, listener.speech_bytes / 2 / SAMPLE_RATE, (time.perf_counter() - began) / seconds


def report(sets: dict[str, list[tuple[str, bytes]]] | None = None) -> None:
    noise = non_speech()
    speech = [(name, read_wav(wav)[0]) for name, clips in (sets or {}).items() for _, wav in clips]
    quiet = b"\0\0" * (SAMPLE_RATE // 2)
    print("\nFalse starts (seconds passed on as speech) in 10 s of each signal:\n")
    print("| detector | " + " | ".join(noise) + " | speech missed | CPU per second of audio |")
    print("|---|" + "---|" * (len(noise) + 2))
    for name, make in detectors().items():
        false, cost = [], []
        for pcm in noise.values():
            count, passed, seconds = starts(make, pcm)
            false.append(f"{count} ({passed:.1f} s)")
            cost.append(seconds)
        missed = sum(1 for _, pcm in speech if starts(make, quiet + pcm + quiet)[0] == 0)
        heard = f"{missed}/{len(speech)}" if speech else "–"
        print(f"| {name} | " + " | ".join(false) + f" | {heard} | {1000 * min(cost):.1f} ms |")


if __name__ == "__main__":
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from stt_bench import recordings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", type=Path, help="a folder of NAME.wav + NAME.txt pairs to add")
    report(recordings(parser.parse_args().recordings))
