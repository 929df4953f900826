"""Voices are checked at start-up, and slow engines load then, saying so."""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from livetx.config import ConfigError, TTSConfig, from_mapping
from livetx.domain import Engines
from livetx.providers import espeak
from livetx.providers.base import Voices
from livetx.providers.espeak import EspeakSpeech
from livetx.engines import check
from livetx.service import WarmUp

from .checkout import require


def tts(**section: Any) -> Any:
    return from_mapping({"tts": section})


@pytest.mark.parametrize("voice", ["en-us", "en", "de", "en-us+f3", "gmw/en-US"])
def test_espeak_voices_it_has_start(voice: str) -> None:
    check(tts(voice=voice))


@pytest.mark.parametrize("voice, message", [
    ("vulcan", "[tts] voice 'vulcan' is not an eSpeak NG voice; try en-us, "),
    ("english", "[tts] voice 'english' is not an eSpeak NG voice; try en"),
    ("en-us+nobody", "[tts] voice 'en-us+nobody' has no eSpeak NG variant 'nobody'; try "),
])
def test_an_unknown_espeak_voice_is_one_line_with_a_few_it_has(voice: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check(tts(voice=voice))
    text = str(refused.value)
    assert text.startswith(message) and "\n" not in text, text
    suggested = text.split("try ", 1)[1].split(" (", 1)[0].split(", ")
    assert 1 <= len(suggested) <= 5
    if "variant" not in text:
        assert all(espeak.check_voice(name) is None for name in suggested)


def test_a_list_of_voices_is_for_an_openai_compatible_service_only() -> None:
    check(tts(provider="openai", voices=["af_heart"]))
    with pytest.raises(ConfigError, match=r'^\[tts\] voices is for provider = "openai": espeak offers the voices it has$'):
        check(tts(voices=["af_heart"]))


def test_the_check_leaves_the_engine_speaking_the_configured_voice() -> None:
    assert espeak.check_voice("de") is None
    wav = espeak._speak(("en-us", 175, 50), "hello")  # on this thread: the check holds the same lock
    assert wav.startswith(b"RIFF") and len(wav) > 1000


def piper_model(directory: Path, speakers: dict[str, int] | None) -> str:
    """A Piper model's config beside a stand-in model file: the check reads the config only."""
    model = directory / "voice.onnx"
    model.write_bytes(b"")
    config = {"num_speakers": len(speakers or {}) or 1, "speaker_id_map": speakers or {}}
    (directory / "voice.onnx.json").write_text(json.dumps(config))
    return str(model)


def test_piper_voices_are_the_models_speakers(tmp_path: Path) -> None:
    require("piper")
    one = piper_model(tmp_path, None)
    check(tts(provider="piper", model=one))
    with pytest.raises(ConfigError, match=r"^\[tts\] voice 'joe' is set, but this Piper model has one speaker"):
        check(tts(provider="piper", model=one, voice="joe"))
    many = piper_model(tmp_path, {f"p{n}": n for n in range(225, 235)})
    check(tts(provider="piper", model=many, voice="p230"))
    with pytest.raises(ConfigError, match=r"not a speaker of this Piper model; try p225, p226, p227, p228, p229 "
                                          r"\(10 speakers\)$"):
        check(tts(provider="piper", model=many, voice="p1"))


class Speakers:
    """Stands in for a loaded Piper model of several speakers (none is installed): which speaker each sentence asked for."""

    def __init__(self) -> None:
        self.asked: list[int | None] = []

    def synthesize_wav(self, text: str, out: wave.Wave_write, config: Any) -> None:
        self.asked.append(config.speaker_id)
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0")


@pytest_twisted.ensureDeferred
async def test_piper_speaks_as_the_configured_speaker_or_the_one_a_session_picked(tmp_path: Path) -> None:
    from livetx.providers.piper import PiperSpeech

    model = piper_model(tmp_path, {"alice": 0, "bob": 1})
    speech = PiperSpeech(TTSConfig(provider="piper", model=model, voice="bob"), None, reactor)
    speech._voice = stand_in = Speakers()
    assert speech.voices() == Voices(("alice", "bob"), "bob")
    for voice in (None, "alice", "bob"):
        assert (await speech.synthesize("Hello.", voice)).startswith(b"RIFF")
    assert stand_in.asked == [1, 0, 1]
    # Unconfigured, the model's first speaker; a model of one speaker offers one voice, named after its file.
    assert PiperSpeech(TTSConfig(provider="piper", model=model), None, Clock()).voices().default == "alice"
    one = PiperSpeech(TTSConfig(provider="piper", model=piper_model(tmp_path, None)), None, reactor)
    one._voice = stand_in = Speakers()
    assert one.voices() == Voices(("voice",), "voice")
    await one.synthesize("Hello.", "voice")
    assert stand_in.asked == [None]


@pytest_twisted.ensureDeferred
async def test_espeak_offers_its_voices_and_variants_and_speaks_in_the_one_asked() -> None:
    speech = EspeakSpeech(TTSConfig(voice="en-us+f3"), None, reactor)
    offered = speech.voices()
    assert offered.default == "en-us+f3" and {"en-us", "en", "de", "fr"} <= set(offered.names)
    assert {"f3", "m1"} <= set(offered.variants) and len(offered.names) > 100
    assert offered.problem("de+m1") is None and offered.problem("de+nobody") is not None
    # eSpeak's output varies by a few hundred samples from call to call; the configured voice is 10 % longer.
    german = len(await speech.synthesize("Guten Tag.", "de"))
    assert abs(german / len(await EspeakSpeech(TTSConfig(voice="de"), None, reactor).synthesize("Guten Tag.")) - 1) < 0.02
    assert abs(german / len(await speech.synthesize("Guten Tag.")) - 1) > 0.06


class SlowEngine:
    name = "slow"

    def __init__(self) -> None:
        self.loading: Deferred[None] = Deferred()

    def warm(self) -> Deferred[None]:
        return self.loading


def test_slow_engines_load_at_start_up_and_say_so() -> None:
    clock, engine, broken = Clock(), SlowEngine(), SlowEngine()
    broken.name = "broken"
    engines = Engines(llm=object(), tts=engine, stt=broken)  # type: ignore[arg-type]
    with capturedLogs() as events:
        WarmUp(engines, clock).startService()
        clock.advance(2.5)
        engine.loading.callback(None)
        broken.loading.errback(OSError("no model file"))
    lines = [formatEvent(e) for e in events]
    assert lines == [
        "loading slow; replies wait for it", "loading broken; replies wait for it",
        "slow loaded in 2.5 s", "broken failed to load: no model file",
    ]
