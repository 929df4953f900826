"""A turn is stored whole, in one transaction, before its ``end`` goes out (live and chat)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest_twisted

from .support import LiveClient, connect, frame_kind
from .test_chat import chat_client, send
from .test_live_ws import LIVE, openai_config


def stored_now(data_dir: Path) -> list[tuple[str, str, str, bool, dict[str, Any]]]:
    """What the database holds this instant, read with a connection of its own (blocking, on purpose)."""
    with sqlite3.connect(data_dir / "livetx.sqlite3") as db:
        rows = db.execute(
            "SELECT s.id, m.role, m.parts, m.interrupted, m.metrics FROM messages m "
            "JOIN sessions s ON s.num = m.session_num ORDER BY m.id"
        ).fetchall()
    return [(s, role, "".join(p.get("text", "") for p in json.loads(parts)), bool(i), json.loads(metrics))
            for s, role, parts, i, metrics in rows]


def read_at(client: LiveClient, kinds: set[str], data_dir: Path) -> list[list[tuple[Any, ...]]]:
    """Read the store the moment a frame of one of ``kinds`` arrives, before anything else runs."""
    seen: list[list[tuple[Any, ...]]] = []
    received = client.onMessage

    def spy(payload: bytes, is_binary: bool) -> None:
        if not is_binary and frame_kind(json.loads(payload)) in kinds:
            seen.append(stored_now(data_dir))  # before the frame wakes the test up
        received(payload, is_binary)

    client.onMessage = spy  # type: ignore[method-assign]
    return seen


@pytest_twisted.ensureDeferred
async def test_a_live_turn_is_stored_before_its_end(livetx: Any, openai: Any) -> None:
    openai.reply = "Stored before the end."
    server = await livetx(openai_config(openai.base_url, tts=False))
    client = await connect(server.url(LIVE, token=server.token("dee"), session_id="durable"))
    at_end = read_at(client, {"end"}, server.data_dir)
    await client.turn("Is it kept?")
    assert [row[:4] for row in at_end[0]] == [
        ("durable", "user", "Is it kept?", False),
        ("durable", "assistant", "Stored before the end.", False),
    ]
    assert at_end[0][1][4]["outcome"] == "ok" and "wav_to_tts_total_time" in at_end[0][1][4]
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_a_chat_turn_is_stored_whole_before_its_end(livetx: Any, openai: Any) -> None:
    openai.reply = " ".join(f"w{i}" for i in range(20))
    openai.token_delay = 0.01
    server = await livetx(openai_config(openai.base_url, tts=False))
    client = await chat_client(server)
    seen = read_at(client, {"plain", "end"}, server.data_dir)
    send(client, "Keep both")
    frames = await client.until("end")
    session = frames[-1]["session_id"]
    assert seen[0] == []  # mid-turn: no question stored without its answer
    assert [row[:4] for row in seen[-1]] == [
        (session, "user", "Keep both", False),
        (session, "assistant", openai.reply, False),
    ]
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_a_failed_chat_turn_names_its_session_and_stores_what_it_produced(livetx: Any, openai: Any) -> None:
    openai.reply = "Half of an answer that never ends"
    openai.token_delay = 0.01
    openai.inject = b"data: {not json\n\n"  # one token, then garbage: the provider fails the turn
    server = await livetx(openai_config(openai.base_url, tts=False))
    client = await chat_client(server)
    send(client, "Will it fail?")  # no session named: the server makes one
    frames = await client.until("end")
    session = frames[0]["session_id"]
    assert session and all(f.get("session_id") == session for f in frames)  # error and end too
    assert [frame_kind(f) for f in frames][-3:] == ["message_saved", "error", "end"]
    produced = "".join(f["data"] for f in frames if f.get("type") == "plain")
    assert produced == "Half "
    rows = stored_now(server.data_dir)
    assert [row[:4] for row in rows] == [(session, "user", "Will it fail?", False), (session, "assistant", "Half ", False)]
    assert rows[1][4]["outcome"] == "failed" and rows[1][4]["error"] == frames[-2]["code"]
    await client.close_and_wait()
