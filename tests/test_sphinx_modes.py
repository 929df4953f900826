"""PocketSphinx's grammar and keyword modes are exact, as docs/configuration.md says, on real eSpeak speech."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from livetx.audio import read_wav, resample, to_wav
from livetx.config import STTConfig
from livetx.providers.sphinx import SphinxRecognizer

from .test_client import base, livetx_client
from .test_engines import speech

#: The examples in docs/configuration.md.
GRAMMAR = """#JSGF V1.0;
grammar home;
public <command> = (turn on | turn off) the (kitchen | bedroom) lights;
"""
KEYWORDS = ["kitchen lights", "bedroom lights"]
COMMANDS = [f"turn {state} the {room} lights" for state in ("on", "off") for room in ("kitchen", "bedroom")]


def test_the_examples_are_the_documented_ones() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    assert GRAMMAR.split("\n", 2)[2].strip() in doc
    assert 'keywords = ["kitchen lights", "bedroom lights"]' in doc


def framings(wav: bytes) -> list[tuple[str, bytes]]:
    """The recording at 22.05 kHz (eSpeak's own) and 16 kHz, with 0, 0.25 and 1 s of silence each side."""
    pcm, rate = read_wav(wav)
    out = []
    for target in (rate, 16000):
        audio = pcm if target == rate else resample(pcm, rate, target)
        for pad in (0.0, 0.25, 1.0):
            quiet = b"\0\0" * int(target * pad)
            out.append((f"{target} Hz, {pad} s", to_wav(quiet + audio + quiet, target)))
    return out


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("mode", ["grammar", "keywords"])
async def test_every_command_is_heard_exactly_however_it_is_framed(mode: str, tmp_path: Path) -> None:
    grammar = tmp_path / "home.jsgf"
    grammar.write_text(GRAMMAR)
    config = STTConfig(provider="pocketsphinx", grammar=str(grammar)) if mode == "grammar" else \
        STTConfig(provider="pocketsphinx", keywords=KEYWORDS)
    recognizer = SphinxRecognizer(config, None, reactor)
    cases = [(said, how, wav) for said in COMMANDS for how, wav in framings(await speech(said))]
    heard = await gatherResults([recognizer.transcribe(wav) for _, _, wav in cases])
    expected = [said if mode == "grammar" else " ".join(said.split()[-2:]) for said, _, _ in cases]
    wrong = [(how, want, got) for (_, how, _), want, got in zip(cases, expected, heard) if got != want]
    assert wrong == []


@pytest_twisted.ensureDeferred
async def test_a_wav_saved_by_say_is_heard_by_talk(livetx: Any, tmp_path: Path) -> None:
    grammar = tmp_path / "home.jsgf"
    grammar.write_text(GRAMMAR)
    for config in (f'grammar = "{grammar}"', "keywords = " + str(KEYWORDS).replace("'", '"')):
        server = await livetx(f'[stt]\nprovider = "pocketsphinx"\n{config}\n')
        saved = tmp_path / "reply.wav"
        said = await livetx_client("say", base(server), "turn off the bedroom lights", "--token", server.token(),
                                   "--out", str(saved))
        assert said.code == 0, said.err
        heard = await livetx_client("talk", base(server), "--wav", str(saved), "--token", server.token())
        expected = "turn off the bedroom lights" if "grammar" in config else "bedroom lights"
        assert f"heard: {expected}\n" in heard.err, heard.err
