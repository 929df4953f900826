"""Chat mode on the sockets: streamed replies, stored sessions, bound listeners."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from livetx.auth.keys import KeyStore

from .support import LiveClient, connect, frame_kind
from .test_live_ws import OPEN_API, UNIFIED, eventually, openai_config


def send(client: LiveClient, text: str, **extra: Any) -> None:
    client.send({"ct": "chat", "t": "send", "message": [{"type": "plain", "text": text}], **extra})


async def chat_client(server: Any, username: str = "ann") -> LiveClient:
    if not hasattr(server, "api_key"):
        server.api_key = KeyStore(server.data_dir).create(["chat"])[1]
    return await connect(server.url(OPEN_API, api_key=server.api_key, username=username, ct="chat"))


@pytest_twisted.ensureDeferred
async def test_streamed_chat_turn_is_stored_and_acknowledged(livetx: Any, openai: Any) -> None:
    openai.reply = "Paris is the capital."
    server = await livetx(openai_config(openai.base_url, tts=False))
    client = await chat_client(server)
    send(client, "Capital of France?", message_id="m1")
    frames = await client.until("end")
    assert all(f["ct"] == "chat" and f["message_id"] == "m1" for f in frames)
    session_id = frames[0]["session_id"]
    assert len(session_id) == 36 and all(f["session_id"] == session_id for f in frames)
    plain = [f for f in frames if f["type"] == "plain"]
    assert all(f["streaming"] is True for f in plain)
    assert "".join(f["data"] for f in plain) == "Paris is the capital."
    kinds = [frame_kind(f) for f in frames]
    assert kinds[-3:] == ["agent_stats", "message_saved", "end"]
    stats = frames[-3]["data"]
    assert stats["time_to_first_token"] >= 0 and stats["model"] == "fake-model"
    saved = frames[-2]["data"]
    assert isinstance(saved["id"], int) and saved["created_at"].endswith("Z")

    openai.reply = "It is Paris."
    send(client, "Say it again", session_id=session_id, enable_streaming=False)
    frames = await client.until("end")
    plain = [f for f in frames if f["type"] == "plain"]
    assert [(f["data"], f["streaming"]) for f in plain] == [("It is Paris.", False)]
    context = openai.requests_to("/chat/completions")[-1].json["messages"]
    assert [m["content"] for m in context[1:]] == [
        "Capital of France?", "Paris is the capital.", "Say it again",
    ]
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_bound_socket_sees_turns_started_elsewhere(livetx: Any, openai: Any) -> None:
    openai.reply = "Shared answer."
    server = await livetx(openai_config(openai.base_url, tts=False))
    sender = await chat_client(server)
    send(sender, "first")
    session_id = (await sender.until("end"))[0]["session_id"]

    watcher = await chat_client(server)
    watcher.send({"ct": "chat", "t": "bind", "session_id": session_id})
    bound = await watcher.until("session_bound")
    assert bound[-1]["session_id"] == session_id and bound[-1]["message_id"].startswith("ws_sub_")
    send(sender, "second", session_id=session_id)
    seen = await watcher.until("end")
    assert "".join(f["data"] for f in seen if f.get("type") == "plain") == "Shared answer."
    assert [frame_kind(f) for f in seen][-2:] == ["message_saved", "end"]

    intruder = await chat_client(server, "eve")
    intruder.send({"ct": "chat", "t": "bind", "session_id": session_id})
    assert (await intruder.next())["code"] == "FORBIDDEN"
    # Ids are per user: eve naming alice's id talks in a session of her own.
    seen_by_watcher = len(watcher.frames)
    send(intruder, "let me in", session_id=session_id)
    answered = await intruder.until("end")
    assert not any(f.get("t") == "error" for f in answered)
    context = openai.requests_to("/chat/completions")[-1].json["messages"]
    assert [m["content"] for m in context if m["role"] != "system"] == ["let me in"]
    send(sender, "third", session_id=session_id)  # alice's own session goes on, unseen by eve
    await sender.until("end")
    await watcher.until("end")
    assert not any(f.get("data") == "let me in" for f in watcher.frames[seen_by_watcher:])
    assert [m["content"] for m in openai.requests_to("/chat/completions")[-1].json["messages"][1:]] == [
        "first", "Shared answer.", "second", "Shared answer.", "third"]
    for client in (sender, watcher, intruder):
        await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_interrupt_keeps_the_partial_reply(livetx: Any, openai: Any) -> None:
    openai.reply = " ".join(f"chunk{i}" for i in range(400))
    openai.token_delay = 0.01
    server = await livetx(openai_config(openai.base_url, tts=False))
    client = await chat_client(server)
    send(client, "go")
    await client.until("plain")
    send(client, "again")
    assert (await client.until("error"))[-1]["code"] == "PROCESSING_ERROR"
    client.send({"ct": "chat", "t": "interrupt"})
    frames = await client.until("end")
    assert frames[-3]["data"]["interrupted"] is True
    await eventually(lambda: len(openai.lost) == 1)
    streamed = "".join(f["data"] for f in client.frames if f.get("type") == "plain")
    from livetx.store.sqlite import SQLiteStore

    await server.stop()
    store = SQLiteStore(server.data_dir)
    stored = await store.messages("ann", frames[-1]["session_id"])
    assert (stored[-1].text, stored[-1].interrupted) == (streamed, True)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_bad_chat_frames_have_the_reference_codes(livetx: Any) -> None:
    server = await livetx()
    client = await connect(server.url(UNIFIED, token=server.token()))
    cases = [
        ({"t": "send", "message": {"type": "plain"}}, "INVALID_MESSAGE_FORMAT", "message must be list"),
        ({"t": "send", "message": []}, "INVALID_MESSAGE_FORMAT", None),
        ({"t": "send", "message": [{"type": "video"}]}, "INVALID_MESSAGE_FORMAT", None),
        ({"t": "send", "message": [{"type": "image"}]}, "INVALID_MESSAGE_FORMAT", None),
        ({"t": "send", "message": "hi", "session_id": 5}, "INVALID_MESSAGE_FORMAT", None),
        ({"t": "bind"}, "INVALID_MESSAGE_FORMAT", None),
        ({"t": "bind", "session_id": "nope"}, "FORBIDDEN", None),
        ({"t": "dance"}, "UNKNOWN_MESSAGE_TYPE", None),
    ]
    for frame, code, text in cases:
        client.send({"ct": "chat", **frame})
        error = await client.next()
        assert (error["ct"], error["t"], error["code"]) == ("chat", "error", code), (frame, error)
        if text:
            assert error["data"] == text
    client.send({"ct": "chat", "t": "send", "message": "plain strings are accepted too"})
    assert frame_kind((await client.until("end"))[-1]) == "end"
    await client.close_and_wait()
