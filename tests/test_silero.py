"""Talk mode's default detector, Silero, on real speech and on what is not speech."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest_twisted

from livetx.live.settings import Settings
from livetx.live.silero import silero_vad
from livetx.live.vad import chosen_vad, pocketsphinx_vad

from .test_voice import spoken

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from vad_bench import non_speech, starts  # noqa: E402  (the benchmark's signals and driver)


def test_noise_clicks_and_music_start_no_utterance() -> None:
    for name, pcm in non_speech(seconds=4.0).items():
        assert starts(silero_vad, pcm)[0] == 0, name


@pytest_twisted.ensureDeferred
async def test_speech_starts_one_utterance_and_is_passed_on() -> None:
    quiet = b"\0\0" * 8000
    for text in ("what time is it", "please turn on the kitchen lights and close the door"):
        pcm = await spoken(text)
        count, passed, _ = starts(silero_vad, quiet + pcm + quiet)
        assert count == 1 and passed >= 0.8 * len(pcm) / 32000, text


def test_the_setting_picks_the_detector() -> None:
    assert chosen_vad(Settings())[1] == 1024  # Silero: 32 ms frames
    assert chosen_vad(replace(Settings(), vad="webrtc"))[1] == pocketsphinx_vad(2)[1]
