"""Conversations outlive connections and server processes."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from livetx.auth.keys import KeyStore
from livetx.auth.tokens import issue_token
from livetx.config import load as load_config
from livetx.storage import jwt_secret, key_store
from livetx.store.sqlite import SQLiteStore

from .support import connect, open_socket
from .test_live_ws import LIVE, OPEN_API, openai_config
from .test_twistd import TWISTD, free_port, wait_for_port


@pytest_twisted.ensureDeferred
async def test_history_comes_back_after_reconnecting(livetx: Any, openai: Any) -> None:
    openai.reply = "Nice to meet you, Ada."
    server = await livetx(openai_config(openai.base_url, tts=False))
    first = await connect(server.url(LIVE, token=server.token("ada")))
    await first.turn("My name is Ada.")
    await first.close_and_wait()

    second = await connect(server.url(LIVE, token=server.token("ada")))
    await second.turn("What is my name?")
    context = openai.requests_to("/chat/completions")[-1].json["messages"]
    assert context[1:] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    # Another user starts from nothing, and a named session starts apart.
    other = await connect(server.url(LIVE, token=server.token("bob")))
    await other.turn("Hello")
    assert openai.requests_to("/chat/completions")[-1].json["messages"][1:] == [{"role": "user", "content": "Hello"}]
    for client in (second, other):
        await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_interrupted_reply_is_stored_as_sent(livetx: Any, openai: Any) -> None:
    openai.reply = " ".join(f"Part {i}." for i in range(300))
    openai.token_delay = 0.01
    server = await livetx(openai_config(openai.base_url, tts=False))
    client = await connect(server.url(LIVE, token=server.token("cy"), session_id="story"))
    client.send({"t": "text_input", "text": "Tell me everything"})
    await client.until("bot_delta_chunk")
    await client.until("bot_delta_chunk")
    client.send({"t": "interrupt"})
    await client.until("stop_play")
    sent = "".join(f["data"]["text"] for f in client.frames if f["t"] == "bot_delta_chunk")
    await client.close_and_wait()
    await server.stop()

    store = SQLiteStore(server.data_dir)
    messages = await store.messages("cy", "story")
    assert [(m.role, m.text, m.interrupted) for m in messages] == [
        ("user", "Tell me everything", False),
        ("assistant", sent, True),
    ]
    assert messages[0].input_type == "text" and messages[1].metrics["input_type"] == "text"
    await store.close()


@pytest_twisted.ensureDeferred
async def test_no_one_can_squat_another_users_session_id(livetx: Any, openai: Any) -> None:
    """Issue 13.3: ids are per owner, so taking carol's ids first takes nothing from carol."""
    server = await livetx(openai_config(openai.base_url, tts=False))
    key = KeyStore(server.data_dir).create(["chat"])[1]
    # Alice by JWT on a live socket, Mallory by API key with a chat send, both naming carol's ids.
    alice = await connect(server.url(LIVE, token=server.token("alice"), session_id="live:carol"))
    assert not any(f["t"] == "error" for f in await alice.turn("alice was here"))
    mallory = await connect(server.url(OPEN_API, api_key=key, username="mallory", ct="chat"))
    mallory.send({"ct": "chat", "t": "send", "message": "mallory too", "session_id": "live:carol"})
    assert not any(f.get("t") == "error" for f in await mallory.until("end"))
    mallory_live = await connect(server.url(OPEN_API, api_key=key, username="mallory", session_id="notes"))
    await mallory_live.turn("mallory's notes")

    # Carol, by JWT and by API key, connects and talks in her own sessions, seeing none of theirs.
    carol = await connect(server.url(LIVE, token=server.token("carol")))
    assert not any(f["t"] == "error" for f in await carol.turn("hello"))
    context = openai.requests_to("/chat/completions")[-1].json["messages"]
    assert [m["content"] for m in context[1:]] == ["hello"]
    carol_key = await connect(server.url(OPEN_API, api_key=key, username="carol", session_id="notes"))
    await carol_key.turn("my notes")
    assert [m["content"] for m in openai.requests_to("/chat/completions")[-1].json["messages"][1:]] == ["my notes"]
    again = await connect(server.url(OPEN_API, api_key=key, username="carol"))  # live:carol, by key
    await again.turn("again")
    assert [m["content"] for m in openai.requests_to("/chat/completions")[-1].json["messages"][1:]] == [
        "hello", openai.reply, "again"]
    for client in (alice, mallory, mallory_live, carol, carol_key, again):
        await client.close_and_wait()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
@pytest_twisted.ensureDeferred
async def test_sigkill_loses_at_most_the_turn_in_flight(
    tmp_path: Path, openai: Any, engine: str, request: pytest.FixtureRequest
) -> None:
    openai.reply = "Stored reply."
    config = tmp_path / "livetx.toml"
    store = f'\n[store]\nurl = "{request.getfixturevalue("postgres_url")}"\n' if engine == "postgresql" else ""
    config.write_text(openai_config(openai.base_url, tts=False) + store)
    data = tmp_path / "data"
    settings = load_config(config)
    token = issue_token(jwt_secret(settings, data), "kim", 3600)
    key = key_store(settings, data).create(["chat"])[1]

    def start() -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        process = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "--logfile=-", "live", "--listen", f"tcp:{port}:interface=127.0.0.1",
                      "--data-dir", str(data), "--config", str(config)],
            cwd=tmp_path, stdout=subprocess.DEVNULL,
        )
        wait_for_port(port, process)
        return process, port

    process, port = start()
    client = await connect(f"ws://127.0.0.1:{port}{LIVE}?token={token}")
    for i in range(3):
        await client.turn(f"question {i}")
    chat = await connect(f"ws://127.0.0.1:{port}/api/v1/live/ws?api_key={key}&username=kim&ct=chat")
    chat.send({"ct": "chat", "t": "send", "message": "keep this"})
    acknowledged = (await chat.until("message_saved"))[-1]["data"]["id"]
    openai.reply = " ".join(f"Long {i}." for i in range(500))
    openai.token_delay = 0.01
    client.send({"t": "text_input", "text": "the turn in flight"})
    await client.until("bot_delta_chunk")
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    await client.closed

    openai.reply, openai.token_delay = "After restart.", 0.0
    process, port = start()
    try:
        client = await connect(f"ws://127.0.0.1:{port}{LIVE}?token={token}")
        await client.turn("are you back")
        context = openai.requests_to("/chat/completions")[-1].json["messages"]
        users = [m["content"] for m in context if m["role"] == "user"]
        assert users[:3] == ["question 0", "question 1", "question 2"]
        assert users[-1] == "are you back"
        assert [m["content"] for m in context if m["role"] == "assistant"][:3] == ["Stored reply."] * 3
        await client.close_and_wait()
        response = await treq.get(f"http://127.0.0.1:{port}/api/v1/chat/sessions?username=kim",
                                  headers={"X-API-Key": key}, reactor=reactor)
        sessions = (await response.json())["sessions"]
        chat_session = next(s for s in sessions if s["kind"] == "chat")
        response = await treq.get(
            f"http://127.0.0.1:{port}/api/v1/chat/sessions/{chat_session['session_id']}/messages?username=kim",
            headers={"X-API-Key": key}, reactor=reactor)
        ids = [m["id"] for m in (await response.json())["messages"]]
        assert acknowledged in ids
    finally:
        process.terminate()
        process.wait(timeout=30)
