"""Protocol extensions over a real socket: turn ids, talk mode, truncation, binary audio."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor

from livetx.audio import duration_ms, read_wav
from livetx.providers import espeak
from livetx.store.sqlite import SQLiteStore

from .support import connect
from .test_live_ws import LIVE, kinds, openai_config
from .test_talk import REFERENCE_FIELDS
from .test_voice import grammar_server, speaking_parts, spoken


@pytest_twisted.ensureDeferred
async def test_reference_client_sees_reference_frames_plus_turn_ids(livetx: Any) -> None:
    server = await livetx()
    client = await connect(server.url(LIVE, token=server.token()))
    await client.turn("hello there. how are you")
    await client.turn("and again")
    ids = [f["turn"] for f in client.frames]
    assert ids == sorted(ids) and set(ids) == {1, 2} and kinds(client.frames).count("end") == 2
    for frame in client.frames:
        assert set(frame) - {"turn"} == REFERENCE_FIELDS.get(frame["t"], {"t", "data"})
    assert "session_updated" not in kinds(client.frames)
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_turn_detection_query_parameter(livetx: Any) -> None:
    server = await livetx()
    talk = await connect(server.url(LIVE, token=server.token(), turn_detection="server"))
    updated = await talk.next()
    assert updated["t"] == "session_updated" and updated["data"]["turn_detection"] == "server"
    wrong = await connect(server.url(LIVE, token=server.token(), turn_detection="psychic"))
    error = await wrong.next()
    assert (error["t"], error["code"]) == ("error", "INVALID_SETTING")
    assert kinds(await wrong.turn("still usable")).count("end") == 1
    for client in (talk, wrong):
        await client.close_and_wait()


def silence(ms: int) -> bytes:
    return bytes(ms * 32)


@pytest_twisted.ensureDeferred
async def test_recorded_speech_makes_two_turns_without_client_framing(livetx: Any, tmp_path: Path) -> None:
    # Barge-in over the socket, and speech before the reply is heard: tests/test_turn_taking_ws.py.
    server = await grammar_server(livetx, tmp_path)
    client = await connect(server.url(LIVE, token=server.token(), turn_detection="server"))
    await client.until("session_updated")
    first, second = "turn off the bedroom lights", "turn on the kitchen lights"
    recording = [silence(1000) + await spoken(first) + silence(900), silence(500) + await spoken(second) + silence(900)]
    speaking_parts(client, recording[0])
    await client.until("user_msg", timeout=30)
    await client.until("end", timeout=30)
    speaking_parts(client, recording[1])
    await client.until("end", timeout=30)

    frames = client.frames
    order = kinds(frames)
    assert [f["data"]["text"] for f in frames if f["t"] == "user_msg"] == [first, second]
    assert [f["turn"] for f in frames if f["t"] == "user_msg"] == [1, 2]
    assert order.count("speech_started") == 2 and order.count("speech_stopped") == 2
    starts = [i for i, kind in enumerate(order) if kind == "speech_started"]
    assert order.index("speech_stopped") < starts[1] < order.index("user_msg", starts[1])
    assert "stop_play" not in order
    assert [f["turn"] for f in frames if f["t"] == "end"] == [1, 2]
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_pocketsphinx_sends_partial_transcripts_while_the_user_speaks(livetx: Any, tmp_path: Path) -> None:
    server = await grammar_server(livetx, tmp_path)
    client = await connect(server.url(LIVE, token=server.token()))
    client.send({"t": "session_update", "turn_detection": "server", "silence_ms": 1500})
    await client.until("session_updated")
    said = "turn on the hallway lights"
    speaking_parts(client, silence(300) + await spoken(said))
    partial = await client.until("user_partial", timeout=30)  # the user has not stopped yet
    assert kinds(partial) == ["speech_started", "user_partial"]
    assert partial[-1]["data"]["text"] and set(partial[-1]["data"]["text"].split()) <= set(said.split())
    speaking_parts(client, silence(1600))
    frames = await client.until("user_msg", timeout=30)
    assert "speech_stopped" in kinds(frames) and frames[-1]["data"]["text"] == said
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_truncate_cuts_the_stored_reply_and_the_next_context(livetx: Any, openai: Any) -> None:
    openai.reply = "The first sentence is here. The second one follows it."
    server = await livetx(openai_config(openai.base_url, tts=False))  # speech: offline eSpeak
    client = await connect(server.url(LIVE, token=server.token("dee"), session_id="cut"))
    frames = await client.turn("Say two things")
    lengths = [duration_ms(base64.b64decode(f["data"])) for f in frames if f["t"] == "response"]
    assert len(lengths) == 2 and all(lengths)
    client.send({"t": "truncate", "turn": 1, "audio_end_ms": lengths[0] + 10})
    truncated = (await client.until("truncated"))[-1]
    assert truncated["data"]["text"] == "The first sentence is here." and truncated["turn"] == 1
    await client.turn("Go on")
    context = openai.requests_to("/chat/completions")[-1].json["messages"]
    assert context[-2:] == [
        {"role": "assistant", "content": "The first sentence is here."},
        {"role": "user", "content": "Go on"},
    ]
    await client.close_and_wait()
    await server.stop()
    store = SQLiteStore(server.data_dir)
    messages = await store.messages("dee", "cut")
    assert [(m.text, m.interrupted) for m in messages if m.role == "assistant"] == [
        ("The first sentence is here.", True),
        (openai.reply, False),
    ]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_binary_audio_round_trips_and_json_clients_are_unaffected(livetx: Any, openai: Any) -> None:
    openai.reply = "Here is the first part. And here is the second."
    openai.transcript = "binary please"
    server = await livetx(openai_config(openai.base_url) + f'[stt]\nprovider = "openai"\nbase_url = "{openai.base_url}"\n')
    plain = await connect(server.url(LIVE, token=server.token("json")))
    binary = await connect(server.url(LIVE, token=server.token("bin")))
    binary.send({"t": "session_update", "audio_transport": "binary"})
    assert (await binary.until("session_updated"))[-1]["data"]["audio_transport"] == "binary"

    pcm = bytes(range(256)) * 25
    binary.send({"t": "start_speaking", "stamp": "b"})
    for i in range(0, len(pcm), 640):
        binary.sendMessage(pcm[i : i + 640], isBinary=True)
    binary.sendMessage(b"odd", isBinary=True)  # refused, the segment lives on
    binary.send({"t": "end_speaking", "stamp": "b"})
    frames = await binary.until("end")
    assert read_wav(openai.requests_to("/audio/transcriptions")[-1].fields["file"])[0] == pcm
    assert [f["code"] for f in frames if f["t"] == "error"] == ["INVALID_AUDIO"]

    reference = await plain.turn("tell me")
    expected = [base64.b64decode(f["data"]) for f in reference if f["t"] == "response"]
    assert len(expected) == 2 and not any(is_binary for _, is_binary in plain.raw)
    headers = [i for i, f in enumerate(frames) if f["t"] == "response"]
    assert [frames[i] for i in headers] == [
        {"t": "response", "turn": 1, "format": "wav", "bytes": len(audio)} for audio in expected
    ]
    assert [frames[i + 1] for i in headers] == [{"t": "binary", "data": audio} for audio in expected]

    plain.sendMessage(pcm, isBinary=True)  # a JSON client's binary message is still refused
    assert (await plain.until("error"))[-1]["code"] == "UNSUPPORTED_FRAME"
    for client in (plain, binary):
        await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_a_session_picks_a_voice_the_server_lists(livetx: Any) -> None:
    server = await livetx()
    response = await treq.get(server.url("/api/v1/voices", scheme="http"), reactor=reactor)
    listed = json.loads(await treq.content(response))
    assert response.code == 200 and listed["engine"] == "espeak" and listed["default"] == "en-us"
    assert {"de", "en-us", "fr"} <= set(listed["voices"]) and "f3" in listed["variants"]

    client = await connect(server.url(LIVE, token=server.token()))
    client.send({"t": "session_update", "voice": "klingon"})
    refused = await client.next()
    assert (refused["code"], refused["data"]) == (
        "INVALID_SETTING", f"voice 'klingon' is not one of the {len(listed['voices'])} voices of this server "
                           "(GET /api/v1/voices lists them)")
    client.send({"t": "session_update", "voice": "de"})
    assert (await client.next())["data"]["voice"] == "de"
    sentence = "Guten Tag, wie geht es dir heute."
    audio = [base64.b64decode(f["data"]) for f in await client.turn(sentence) if f["t"] == "response"]
    # eSpeak's output varies by a few hundred samples from call to call; English is 15 % longer.
    assert abs(len(audio[0]) / len(espeak._speak(("de", 175, 50), sentence)) - 1) < 0.02
    assert abs(len(audio[0]) / len(espeak._speak(("en-us", 175, 50), sentence)) - 1) > 0.08
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_a_server_without_speech_lists_no_voice_and_refuses_one(livetx: Any) -> None:
    server = await livetx('[tts]\nprovider = "none"\n')
    response = await treq.get(server.url("/api/v1/voices", scheme="http"), reactor=reactor)
    assert json.loads(await treq.content(response)) == {"engine": None, "default": None, "voices": [], "variants": []}
    client = await connect(server.url(LIVE, token=server.token()))
    client.send({"t": "session_update", "voice": "en-us"})
    assert (await client.next())["data"] == "voice: this server speaks no audio ([tts] provider none)"
    await client.close_and_wait()
