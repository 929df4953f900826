"""The real server on a loopback port, driven by a real WebSocket client."""

from __future__ import annotations

import base64
import io
import json
import wave
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from livetx.auth.keys import KeyStore
from livetx.auth.tokens import issue_token

from .support import connect, open_socket, replied

LIVE = "/api/live_chat/ws"
UNIFIED = "/api/unified_chat/ws"
OPEN_API = "/api/v1/live/ws"


def openai_config(base_url: str, tts: bool = True) -> str:
    text = f"""
[llm]
provider = "openai"
base_url = "{base_url}"
model = "fake-model"
api_key = "sk-test-secret"
system_prompt = "Be brief."
"""
    if tts:
        text += f"""
[tts]
provider = "openai"
base_url = "{base_url}"
api_key = "sk-test-secret"
"""
    return text


def kinds(frames: list[dict[str, Any]]) -> list[str]:
    return [f["t"] for f in frames]


async def eventually(check: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await deferLater(reactor, 0.02, lambda: None)
    assert check()


# -- text turns ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_offline_defaults_echo_and_speak_a_text_turn(livetx: Any) -> None:
    server = await livetx()
    client = await connect(server.url(LIVE, token=server.token()))
    frames = await client.turn("hello out there. how are you today")
    assert kinds(frames)[:2] == ["metrics", "user_msg"]
    deltas = "".join(f["data"]["text"] for f in frames if f["t"] == "bot_delta_chunk")
    assert deltas == "hello out there. how are you today"
    captions = [f["data"]["text"] for f in frames if f["t"] == "bot_text_chunk"]
    assert captions == ["hello out there.", "how are you today"]
    audio = [base64.b64decode(f["data"]) for f in frames if f["t"] == "response"]
    assert len(audio) == 2
    for wav in audio:  # eSpeak NG, offline: real, playable speech
        with wave.open(io.BytesIO(wav)) as w:
            assert w.getnframes() > w.getframerate() * 0.3
    assert "bot_msg" not in kinds(frames)
    metrics = {k: v for f in frames if f["t"] == "metrics" for k, v in f["data"].items()}
    assert (metrics["tts"], metrics["chat_model"]) == ("espeak", "echo")
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_without_speech_the_reply_comes_as_bot_msg(livetx: Any) -> None:
    server = await livetx('[tts]\nprovider = "none"\n')
    client = await connect(server.url(LIVE, token=server.token()))
    frames = await client.turn("hello out there")
    assert kinds(frames)[:2] == ["metrics", "user_msg"]
    assert frames[1]["data"]["text"] == "hello out there"
    bot_msg = next(f for f in frames if f["t"] == "bot_msg")
    assert bot_msg["data"]["text"] == "hello out there"
    assert isinstance(bot_msg["data"]["ts"], int)
    assert kinds(frames)[-2:] == ["metrics", "end"]  # the last metrics go before end, on purpose
    assert frames[-2]["data"]["wav_to_tts_total_time"] >= 0
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_audio_starts_while_the_model_is_still_writing(livetx: Any, openai: Any) -> None:
    openai.reply = "The first sentence is here. The second one follows it. A third closes the reply."
    openai.token_delay = 0.03
    server = await livetx(openai_config(openai.base_url))
    client = await connect(server.url(LIVE, token=server.token()))
    frames = await client.turn("Talk to me")
    order = kinds(frames)
    first_audio = order.index("response")
    last_delta = len(order) - 1 - order[::-1].index("bot_delta_chunk")
    assert first_audio < last_delta, order  # interleaved, not audio-after-text
    deltas = "".join(f["data"]["text"] for f in frames if f["t"] == "bot_delta_chunk")
    assert deltas == openai.reply
    captions = [f["data"]["text"] for f in frames if f["t"] == "bot_text_chunk"]
    assert captions == [
        "The first sentence is here.",
        "The second one follows it.",
        "A third closes the reply.",
    ]
    for frame in frames:
        if frame["t"] == "response":
            with wave.open(io.BytesIO(base64.b64decode(frame["data"]))) as w:
                assert w.getnframes() > 0
    metrics: dict[str, Any] = {}
    for frame in frames:  # every metrics frame comes before end
        if frame["t"] == "metrics":
            metrics.update(frame["data"])
    for key in ("input_type", "llm_ttft", "llm_total_time", "tts_first_frame_time",
                "tts_total_time", "speak_to_first_frame", "wav_to_tts_total_time", "tts",
                "chat_model"):
        assert key in metrics, key
    assert metrics["chat_model"] == "fake-model"
    assert "bot_msg" not in order
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_conversation_so_far_is_sent_as_context(livetx: Any, openai: Any) -> None:
    openai.reply = "Noted."
    server = await livetx(openai_config(openai.base_url, tts=False))
    client = await connect(server.url(LIVE, token=server.token()))
    for text in ("My name is Ada.", "What is my name?"):
        client.send({"t": "text_input", "text": text})
        await client.until("end")
    chats = openai.requests_to("/chat/completions")
    assert chats[-1].json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "What is my name?"},
    ]
    assert chats[-1].json["stream"] is True
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_busy_session_refuses_a_second_text(livetx: Any, openai: Any) -> None:
    openai.token_delay = 0.02
    server = await livetx(openai_config(openai.base_url, tts=False))
    client = await connect(server.url(LIVE, token=server.token()))
    client.send({"t": "text_input", "text": "first"})
    await client.until("bot_delta_chunk")
    frames = await client.turn("second")
    assert {"t": "error", "data": "Session is busy", "code": "PROCESSING_ERROR"} in frames
    deltas = "".join(f["data"]["text"] for f in client.frames if f["t"] == "bot_delta_chunk")
    assert deltas == openai.reply  # the running turn was not disturbed
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_interrupt_closes_upstream_and_no_audio_follows(livetx: Any, openai: Any) -> None:
    openai.reply = " ".join(f"Sentence number {i} is right here." for i in range(40))
    openai.token_delay = 0.01
    server = await livetx(openai_config(openai.base_url))
    client = await connect(server.url(LIVE, token=server.token()))
    client.send({"t": "text_input", "text": "Count for me"})
    await client.until("response")
    client.send({"t": "interrupt"})
    await client.until("stop_play")
    stop_at = len(client.frames)
    await eventually(lambda: len(openai.lost) >= 1)  # the SSE stream was really closed
    await deferLater(reactor, 0.3, lambda: None)
    late = client.frames[stop_at:]
    assert "response" not in kinds(late) and "end" not in kinds(late), kinds(late)

    openai.reply = "Fine."
    frames = await client.turn("Never mind")
    assert "error" not in kinds(frames)
    last_chat = openai.requests_to("/chat/completions")[-1]
    partial = last_chat.json["messages"][-2]
    assert partial["role"] == "assistant" and partial["content"].startswith("Sentence number 0")
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_client_vanishing_mid_turn_frees_the_upstream(livetx: Any, openai: Any) -> None:
    openai.reply = " ".join(f"Word{i}." for i in range(200))
    openai.token_delay = 0.01
    server = await livetx(openai_config(openai.base_url))
    client = await connect(server.url(LIVE, token=server.token()))
    client.send({"t": "text_input", "text": "go on"})
    await client.until("bot_delta_chunk")
    client.transport.abortConnection()  # no close handshake: the device just vanished
    await client.closed
    await eventually(lambda: openai.lost == ["/v1/chat/completions"])
    await eventually(lambda: len(server.service.getServiceNamed("connections")) == 0)


@pytest_twisted.ensureDeferred
async def test_upstream_failure_is_an_error_frame_and_the_session_survives(
    livetx: Any, openai: Any
) -> None:
    server = await livetx(openai_config(openai.base_url, tts=False))
    client = await connect(server.url(LIVE, token=server.token()))
    openai.fail_status = 500
    frames = await client.turn("hi")
    error = next(f for f in frames if f["t"] == "error")
    assert error["code"] == "LLM_ERROR" and "500" in error["data"]
    assert "sk-test-secret" not in json.dumps(client.frames)
    openai.fail_status = None
    assert replied(await client.turn("hi again"))
    await client.close_and_wait()


# -- bad input --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_garbage_gets_coded_errors_and_the_session_lives(livetx: Any) -> None:
    server = await livetx()
    client = await connect(server.url(LIVE, token=server.token()))
    cases = [
        (b"{oops", False, "INVALID_JSON"),
        (b"[1,2,3]", False, "INVALID_MESSAGE_FORMAT"),
        (b'{"t": 12}', False, "INVALID_MESSAGE_FORMAT"),
        (b'{"t": "fly_away"}', False, "UNKNOWN_MESSAGE_TYPE"),
        (b'{"t": "text_input", "text": ""}', False, "INVALID_MESSAGE_FORMAT"),
        (b'{"t": "speaking_part", "data": "AAAAAA=="}', False, "INVALID_STATE"),
        (b'{"t": "end_speaking", "stamp": "x"}', False, "INVALID_STATE"),
        (b"\x00\x01binary", True, "UNSUPPORTED_FRAME"),
        (b"[" * 50_000, False, "INVALID_JSON"),
    ]
    for payload, binary, code in cases:
        client.sendMessage(payload, isBinary=binary)
        frame = await client.next()
        assert frame["t"] == "error" and frame["code"] == code, (payload[:20], frame)
    assert replied(await client.turn("still alive"))
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_oversized_message_closes_with_1009(livetx: Any) -> None:
    server = await livetx("[server]\nmax_message_bytes = 1000\nmax_frame_bytes = 1000\n")
    client = await connect(server.url(LIVE, token=server.token()))
    client.send({"t": "text_input", "text": "x" * 5000})
    await client.closed
    assert client.close_code == 1009


# -- authentication ----------------------------------------------------------------


@pytest.mark.parametrize(
    "token, reason",
    [
        (None, "Missing authentication token"),
        ("", "Missing authentication token"),
        ("not-a-jwt", "Invalid token"),
        ("expired", "Token expired"),
        ("wrong-secret", "Invalid token"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_jwt_endpoints_close_with_1008(livetx: Any, token: str | None, reason: str) -> None:
    server = await livetx()
    if token == "expired":
        token = server.token(ttl=-10)
    elif token == "wrong-secret":
        token = issue_token("another-secret-of-a-proper-length-32b", "alice", 3600)
    for path in (LIVE, UNIFIED):
        query = {} if token is None else {"token": token}
        client = await open_socket(server.url(path, **query))
        await client.closed
        assert (client.close_code, client.close_reason) == (1008, reason)
        assert client.frames == []


@pytest_twisted.ensureDeferred
async def test_open_api_accepts_a_key_three_ways(livetx: Any) -> None:
    server = await livetx()
    _, key = KeyStore(server.data_dir).create(["chat"], name="device")
    ways: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"api_key": key}, {}),
        ({}, {"Authorization": f"Bearer {key}"}),
        ({}, {"X-API-Key": key}),
    ]
    for query, headers in ways:
        client = await connect(server.url(OPEN_API, username="bob", **query), headers)
        assert replied(await client.turn("hi"))
        await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_open_api_refusals_send_a_code_then_close(livetx: Any) -> None:
    server = await livetx()
    store = KeyStore(server.data_dir)
    _, key = store.create(["chat"])
    _, other_scope = store.create(["config"])
    revoked_record, revoked = store.create(["chat"])
    store.revoke(revoked_record.id)
    cases = [
        ({"username": "bob"}, "UNAUTHORIZED"),
        ({"username": "bob", "api_key": "abk_wrong"}, "UNAUTHORIZED"),
        ({"username": "bob", "api_key": other_scope}, "UNAUTHORIZED"),
        ({"username": "bob", "api_key": revoked}, "UNAUTHORIZED"),
        ({"api_key": key}, "BAD_USER"),
        ({"api_key": key, "username": "  "}, "BAD_USER"),
        ({"api_key": key, "username": "bob", "ct": "video"}, "INVALID_MESSAGE"),
    ]
    for query, code in cases:
        client = await open_socket(server.url(OPEN_API, **query))
        await client.closed
        assert client.close_code == 1008, query
        assert [f["code"] for f in client.frames] == [code], query
        assert client.frames[0]["t"] == "error"


@pytest_twisted.ensureDeferred
async def test_unified_endpoint_routes_by_ct(livetx: Any) -> None:
    server = await livetx()
    client = await connect(server.url(UNIFIED, token=server.token()))
    client.send({"ct": "chat", "t": "send", "message": "not a list of parts", "enable_streaming": "yes"})
    frame = await client.next()
    assert frame == {"ct": "chat", "t": "error", "code": "INVALID_MESSAGE_FORMAT",
                     "data": "enable_streaming must be true or false"}
    client.send({"ct": "chat", "t": "send", "message": [{"type": "plain", "text": "hi"}]})
    assert (await client.until("end"))[-1]["ct"] == "chat"
    client.send({"ct": 7, "t": "text_input", "text": "hi"})
    assert (await client.next())["code"] == "INVALID_MESSAGE_FORMAT"
    assert replied(await client.turn("hi", ct="live"))
    assert replied(await client.turn("no ct means live"))
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_stopping_the_server_closes_sockets_with_1001(livetx: Any) -> None:
    server = await livetx()
    client = await connect(server.url(LIVE, token=server.token()))
    await server.stop()
    await client.closed
    assert client.close_code == 1001
