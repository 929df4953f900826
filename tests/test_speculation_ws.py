"""Speculative reply over a real socket: Whisper, eSpeak's voice, a hosted-like model (the fake
OpenAI-compatible service with a first-token delay). A reply begun at a pause the person speaks on
after sends and stores nothing; the one begun at the last pause is the turn's, and answers."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from .support import connect
from .test_live_ws import LIVE, kinds, openai_config
from .test_ops import families, get
from .test_talk_ws import silence
from .test_turn_taking_ws import real_time, stored, words
from .test_voice import spoken


def reply_to(messages: list[dict[str, Any]]) -> str:
    """The model answers with what it was asked, word by word: whose request a frame belongs to shows."""
    return "You asked: " + str(messages[-1]["content"]).strip() + "."


@pytest_twisted.ensureDeferred
async def test_a_reply_begun_at_a_pause_the_person_speaks_on_after_sends_and_stores_nothing(
    livetx: Any, openai: Any,
) -> None:
    openai.reply = reply_to
    openai.first_token_delay, openai.token_delay = 0.3, 0.25  # a hosted model, slow enough to be caught mid-reply
    # On for every session by the server's default, [llm] speculative.
    server = await livetx(openai_config(openai.base_url, tts=False) + "speculative = true\n[stt]\npreload = true\n")
    chats = lambda: openai.requests_to("/chat/completions")  # noqa: E731
    client = await connect(server.url(LIVE, token=server.token("di"), session_id="s", turn_detection="server"))
    # The silence rule, held long: the transcript rule would end "please call my sister." at once.
    client.send({"t": "session_update", "end_of_turn": "silence", "silence_ms": 3000})
    await client.until("session_updated")
    assert (await client.until("session_updated"))[-1]["data"]["speculative"] is True
    head, tail = await spoken("please call my sister"), await spoken("at seven in the evening")
    await real_time(client, silence(300) + head + silence(300))
    paused = 300
    while not chats():  # the transcript at the pause is in: the model is asked, before any end of turn
        assert paused < 2500, "no model request within 2.5 s of the pause"
        await real_time(client, silence(100))
        paused += 100
    (begun,) = chats()
    assert words(begun.json["messages"][-1]["content"]) == ["please", "call", "my", "sister"]
    await real_time(client, silence(400))  # its first words are written meanwhile, and held
    assert "speech_stopped" not in kinds(client.frames) and not _reply_frames(client.frames)
    await real_time(client, tail + silence(300))  # the person goes on
    while len(chats()) < 2:
        await real_time(client, silence(100))
    asked = words(chats()[1].json["messages"][-1]["content"])
    assert asked[:4] == ["please", "call", "my", "sister"] and asked[-1] == "evening"
    assert "speech_stopped" not in kinds(client.frames)  # the second was begun before its end of turn
    frames = await client.until("end", timeout=60)
    assert "/v1/chat/completions" in openai.lost and len(chats()) == 2  # the first was cancelled
    order = kinds(frames)
    assert order.count("user_msg") == 1 and order.count("speech_started") == 1
    assert order.index("speech_stopped") < order.index("user_msg") < order.index("bot_delta_chunk")
    said = "".join(f["data"]["text"] for f in frames if f["t"] == "bot_delta_chunk")
    assert words(said) == ["you", "asked", *asked]  # only the committed reply, whole
    assert "response" in order  # spoken
    (figures,) = [f["data"] for f in frames if f["t"] == "metrics" and "speculations_committed" in f["data"]]
    assert figures == {"speculations_committed": 1, "speculations_discarded": 1}
    _, _, scraped = await get(server, "/metrics")
    counted = families(scraped)
    assert counted[("livetx_speculations_total", (("outcome", "committed"),))] == 1
    assert counted[("livetx_speculations_total", (("outcome", "discarded"),))] == 1
    await client.close_and_wait()
    ((user, text, _), (role, reply, _)) = (await stored(server, "di", "s"))[0]  # one exchange: the whole request
    assert (user, role) == ("user", "assistant") and words(text) == asked and words(reply) == ["you", "asked", *asked]


def _reply_frames(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["t"] in ("user_msg", "bot_delta_chunk", "bot_text_chunk", "response", "metrics")]
