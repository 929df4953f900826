"""Talk mode over a real socket with the default engines (Whisper, the echo model, eSpeak NG):
a request in two breaths stays one request, and speech over a reply already heard barges in."""

from __future__ import annotations

import re
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from livetx.live.endpoint import EAGERNESS, THRESHOLD
from livetx.store.sqlite import SQLiteStore

from .support import connect
from .test_live_ws import LIVE, kinds
from .test_talk_ws import silence
from .test_voice import speaking_parts, spoken


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def user_msgs(frames: list[dict[str, Any]]) -> list[tuple[list[str], int]]:
    return [(words(f["data"]["text"]), f["turn"]) for f in frames if f["t"] == "user_msg"]


async def stored(server: Any, user: str, *sessions: str) -> list[list[tuple[str, str, bool]]]:
    """Each session's stored messages (role, text, interrupted), once the server has stopped."""
    await server.stop()
    store = SQLiteStore(server.data_dir)
    try:
        return [[(m.role, m.text, m.interrupted) for m in await store.messages(user, s)] for s in sessions]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_pause_mid_request_loses_nothing_before_or_after_its_first_user_msg(livetx: Any) -> None:
    # The echo model takes half a second a word: the reply's one sentence is not spoken for seconds.
    server = await livetx("[llm]\necho_delay = 0.5\n")
    head, tail = await spoken("please call my sister"), await spoken("at seven in the evening")

    # Resumed while the first half is still being transcribed: no user_msg for it at all.
    client = await connect(server.url(LIVE, token=server.token("ann"), session_id="at-once", turn_detection="server"))
    await client.until("session_updated")
    speaking_parts(client, silence(500) + head + silence(900) + tail + silence(1000))
    frames = await client.until("end", timeout=60)
    ((said, turn),) = user_msgs(frames)
    assert turn == 1 and said[:4] == ["please", "call", "my", "sister"] and said[-1] == "evening"
    assert kinds(frames).count("speech_started") == 2 and "stop_play" not in kinds(frames)
    echoed = words(" ".join(f["data"]["text"] for f in frames if f["t"] == "bot_text_chunk"))
    assert echoed == said  # the model was sent both halves as one message
    await client.close_and_wait()

    # Resumed after the first user_msg, before any audio: the same turn again, with the whole text.
    client = await connect(server.url(LIVE, token=server.token("ann"), session_id="later", turn_detection="server"))
    await client.until("session_updated")
    speaking_parts(client, silence(500) + head + silence(900))
    first = await client.until("user_msg", timeout=60)
    assert "response" not in kinds(first)
    speaking_parts(client, tail + silence(1000))
    frames = first + await client.until("end", timeout=60)
    (head_said, one), (whole, again) = user_msgs(frames)
    assert one == again == 1 and whole[: len(head_said)] == head_said and whole[-1] == "evening"
    assert "stop_play" not in kinds(frames) and [f["turn"] for f in frames if f["t"] == "end"] == [1]
    await client.close_and_wait()

    for history in await stored(server, "ann", "at-once", "later"):  # one exchange each, nothing withdrawn
        ((role, text, interrupted), (_, reply, _)) = history
        assert role == "user" and words(text)[-1] == "evening" and not interrupted and words(reply) == words(text)


@pytest_twisted.ensureDeferred
async def test_speech_once_the_reply_is_heard_barges_in_and_both_utterances_stay(livetx: Any) -> None:
    server = await livetx("[llm]\necho_delay = 0.5\n")
    client = await connect(server.url(LIVE, token=server.token("bo"), session_id="s", turn_detection="server"))
    await client.until("session_updated")
    speaking_parts(client, silence(500) + await spoken("Good morning. I would like a table for two tonight.")
                   + silence(900))
    await client.until("response", timeout=60)  # the first sentence is playing; the model goes on
    speaking_parts(client, await spoken("no wait") + silence(1000))
    frames = await client.until("end", timeout=60)
    order = kinds(frames)
    stop = order.index("stop_play")
    assert frames[stop]["turn"] == 1 and order[stop - 1] == "speech_started"
    assert [turn for _, turn in user_msgs(client.frames)] == [1, 2]
    await client.close_and_wait()
    (history,) = await stored(server, "bo", "s")
    assert [(role, interrupted) for role, _, interrupted in history] == [
        ("user", False), ("assistant", True), ("user", False), ("assistant", False)]
    assert words(history[2][1]) == ["no", "wait"]


# -- semantic end of turn with the real model ------------------------------------


@pytest_twisted.ensureDeferred
async def test_smart_turn_hears_a_finished_request_from_an_unfinished_one() -> None:
    from livetx.providers.smart_turn import probability

    pause = silence(200)
    finished = probability(await spoken("turn on the kitchen lights") + pause)
    unfinished = probability(await spoken("I would like to") + pause)
    assert unfinished < THRESHOLD < finished


async def real_time(client: Any, pcm: bytes) -> None:
    """Stream as a microphone does, at its own pace: 100 ms of audio every 100 ms."""
    for i in range(0, len(pcm), 3200):
        speaking_parts(client, pcm[i : i + 3200])
        await deferLater(reactor, 0.1, lambda: None)


@pytest_twisted.ensureDeferred
async def test_semantic_end_of_turn_ends_a_finished_request_before_the_longest_silence(livetx: Any) -> None:
    server = await livetx()
    client = await connect(server.url(LIVE, token=server.token(), turn_detection="server"))
    client.send({"t": "session_update", "end_of_turn": "semantic", "eagerness": "high"})
    await client.until("session_updated")
    said = await spoken("turn on the kitchen lights")
    await real_time(client, silence(300) + said + silence(1500))
    stopped = (await client.until("speech_stopped", timeout=30))[-1]
    longest = EAGERNESS["high"][1]
    assert stopped["data"]["audio_end_ms"] < 300 + len(said) // 32 + longest  # the model ended it, not the wait
    await client.close_and_wait()
