"""The offline engines on their own, without a server."""

from __future__ import annotations

import io
import math
import wave
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from livetx.audio import read_wav, resample, to_wav
from livetx.config import STTConfig, TTSConfig
from livetx.providers.base import STTError, TTSError
from livetx.providers.espeak import EspeakSpeech
from livetx.providers.sphinx import SphinxRecognizer


async def speech(text: str, **settings: object) -> bytes:
    return await EspeakSpeech(TTSConfig(**settings), None, reactor).synthesize(text)  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_espeak_voice_rate_and_pitch_change_the_audio() -> None:
    base = await speech("The quick brown fox.")
    slow = await speech("The quick brown fox.", rate=100)
    high = await speech("The quick brown fox.", pitch=90)
    german = await speech("The quick brown fox.", voice="de")
    lengths = {name: len(read_wav(wav)[0]) for name, wav in
               {"base": base, "slow": slow, "high": high, "german": german}.items()}
    assert lengths["slow"] > 1.4 * lengths["base"]
    assert high != base and german != base
    with wave.open(io.BytesIO(base)) as w:  # a complete file, as decodeAudioData wants
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)


@pytest_twisted.ensureDeferred
async def test_espeak_unknown_voice_is_a_tts_error() -> None:
    with pytest.raises(TTSError, match="no voice"):
        await speech("hello", voice="klingon-xx")
    assert read_wav(await speech("still works"))[0]  # the engine recovers


@pytest_twisted.ensureDeferred
async def test_sphinx_keywords_spot_phrases(tmp_path: Path) -> None:
    wav = await speech("turn on the kitchen lights")
    recognizer = SphinxRecognizer(STTConfig(keywords=["kitchen lights", "bedroom lights"]), None, reactor)
    assert await recognizer.transcribe(wav) == "kitchen lights"


@pytest_twisted.ensureDeferred
async def test_sphinx_accepts_any_rate_and_refuses_garbage() -> None:
    grammar_free = SphinxRecognizer(STTConfig(), None, reactor)
    silence = to_wav(b"\0\0" * 8000, 8000)  # resampled to 16 kHz inside
    assert isinstance(await grammar_free.transcribe(silence), str)
    with pytest.raises(STTError, match="cannot read"):
        await grammar_free.transcribe(b"definitely not a wav")


def test_resample_keeps_duration_and_shape() -> None:
    ramp = b"".join(int(i * 10).to_bytes(2, "little", signed=True) for i in range(2205))
    out = resample(ramp, 22050, 16000)
    assert len(out) // 2 == 1600
    assert resample(ramp, 16000, 16000) == ramp


def test_resample_is_band_limited() -> None:
    """A 6 kHz tone is above 8 kHz audio's Nyquist limit: filtered out, not folded back as 2 kHz."""
    tone = b"".join(
        int(8000 * math.sin(2 * math.pi * 6000 * i / 16000)).to_bytes(2, "little", signed=True)
        for i in range(16000)
    )
    down = resample(tone, 16000, 8000)
    assert len(down) == 16000
    samples = [int.from_bytes(down[i : i + 2], "little", signed=True) for i in range(2000, 14000, 2)]
    assert max(abs(s) for s in samples) < 200  # linear interpolation leaves it at full scale
