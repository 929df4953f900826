"""Resume: numbered frames, a dropped socket's turn going on, and a new socket picking it up."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from livetx.errors import ErrorCode
from livetx.live.frames import FrameError
from livetx.live.journal import MemoryJournals

from .support import LiveClient, connect, frame_kind
from .test_durability import stored_now

SLOW_ECHO = '[llm]\nprovider = "echo"\necho_delay = 0.05\n\n[tts]\nprovider = "none"\n'
REPLY = "one two three four five six seven eight nine ten"


def resumed(journals: MemoryJournals, session_id: str, owner: str, after: int) -> tuple[list[dict[str, Any]], Any]:
    got: list[dict[str, Any]] = []
    outcome: list[Any] = []
    journals.resume(session_id, owner, after, got.append).addBoth(outcome.append)
    return got, outcome[0]


def test_journal_replays_what_was_missed_then_the_rest_until_released() -> None:
    clock = Clock()
    journals = MemoryJournals(clock, seconds=120, limit=5)
    writer = journals.open("ann")
    assert [writer.append({"t": "x", "n": n})["seq"] for n in range(3)] == [1, 2, 3]
    got, tail = resumed(journals, writer.session_id, "ann", 1)
    assert [f["seq"] for f in got] == [2, 3]
    writer.append({"t": "end"})
    assert [f["seq"] for f in got] == [2, 3, 4]
    stopped: list[bool] = []
    writer.detach(lambda: stopped.append(True))
    tail.interrupt()
    assert stopped == [True]
    ended: list[int] = []
    tail.done.addCallback(ended.append)
    writer.release()
    assert ended == [4]
    # The new socket writes on under the same id, after the last seq.
    again = journals.open("ann", writer.session_id, 4)
    assert again.append({"t": "y"})["seq"] == 5


@pytest.mark.parametrize("owner, after, code", [
    ("eve", 0, ErrorCode.FORBIDDEN),
    ("ann", 0, ErrorCode.RESUME_EXPIRED),  # frame 1 fell out of the last 5
    ("ann", 9, ErrorCode.RESUME_EXPIRED),  # a seq never sent
])
def test_journal_refusals(owner: str, after: int, code: str) -> None:
    journals = MemoryJournals(Clock(), seconds=120, limit=5)
    writer = journals.open("ann")
    for n in range(6):
        writer.append({"t": "x"})
    _, failure = resumed(journals, writer.session_id, owner, after)
    assert isinstance(failure.value, FrameError) and failure.value.code == code


def test_journal_forgets_after_its_window() -> None:
    clock = Clock()
    journals = MemoryJournals(clock, seconds=120, limit=2000)
    writer = journals.open("ann")
    writer.append({"t": "x"})
    writer.append({"t": "y"})
    writer.release()
    clock.advance(121)
    _, failure = resumed(journals, writer.session_id, "ann", 1)
    assert failure.value.code == ErrorCode.RESUME_EXPIRED
    assert resumed(journals, "unknown", "ann", 0)[1].value.code == ErrorCode.RESUME_EXPIRED


async def settle(seconds: float = 0.05) -> None:
    await deferLater(reactor, seconds, lambda: None)


def seqs(received: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in received if "seq" in f]


async def start_turn(server: Any, token: str, text: str = REPLY) -> tuple[LiveClient, str, list[dict[str, Any]]]:
    """A socket that opted in, in the middle of a slow reply; it is dropped there."""
    client = await connect(server.url("/api/live_chat/ws", token=token, resume="1"))
    updated = await client.next()
    assert updated["t"] == "session_updated" and updated["data"]["resume"] is True and updated["seq"] == 1
    client.send({"t": "text_input", "text": text})
    await client.wait(lambda: sum(frame_kind(f) == "bot_delta_chunk" for f in client.frames) >= 3)
    client.dropConnection(abort=True)
    await client.wait(lambda: client.close_code is not None)
    return client, updated["session_id"], list(client.frames)


@pytest_twisted.ensureDeferred
async def test_a_new_socket_resumes_a_dropped_turn_without_gaps_or_repeats(livetx: Any) -> None:
    server = await livetx(SLOW_ECHO)
    token = server.token("ann")
    _, session_id, before = await start_turn(server, token)

    stranger = await connect(server.url("/api/live_chat/ws", token=server.token("eve")))
    stranger.send({"t": "resume", "session_id": session_id, "seq": 0})
    assert (await stranger.next())["code"] == ErrorCode.FORBIDDEN

    after = await connect(server.url("/api/live_chat/ws", token=token))
    after.send({"t": "resume", "session_id": session_id, "seq": before[-1]["seq"]})
    rest = await after.until("end")
    numbers = seqs(before) + seqs(rest)
    assert numbers == list(range(1, len(numbers) + 1))  # in order, nothing twice, nothing missing
    text = "".join(f["data"]["text"] for f in before + rest if f["t"] == "bot_delta_chunk")
    assert text.split() == REPLY.split()

    # The resumed socket writes on under the same session, numbers going on.
    await settle(0.1)  # the old writer lets go just after its last frame
    more = await after.turn("again")
    assert seqs(more)[0] > numbers[-1] and seqs(more) == list(range(seqs(more)[0], seqs(more)[-1] + 1))
    await after.close_and_wait()
    await stranger.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_an_interrupt_after_resuming_stops_the_turn(livetx: Any) -> None:
    server = await livetx(SLOW_ECHO)
    token = server.token("ann")
    _, session_id, before = await start_turn(server, token)
    after = await connect(server.url("/api/live_chat/ws", token=token))
    after.send({"t": "resume", "session_id": session_id, "seq": before[-1]["seq"]})
    after.send({"t": "text_input", "text": "not now"})
    after.send({"t": "interrupt"})
    rest = await after.until("stop_play")
    assert any(f.get("code") == ErrorCode.PROCESSING_ERROR for f in rest)  # the resumed turn still ran
    delivered = "".join(f["data"]["text"] for f in before + rest if f["t"] == "bot_delta_chunk")
    assert len(delivered.split()) < len(REPLY.split())
    await after.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_resume_must_come_first_and_name_a_kept_session(livetx: Any) -> None:
    server = await livetx(SLOW_ECHO)
    client = await connect(server.url("/api/live_chat/ws", token=server.token("ann")))
    client.send({"t": "resume", "session_id": "nope", "seq": 3})
    assert (await client.next())["code"] == ErrorCode.RESUME_EXPIRED
    client.send({"t": "resume", "session_id": "nope", "seq": 3})
    assert (await client.next())["code"] == ErrorCode.INVALID_STATE
    client.send({"t": "session_update", "resume": 1})
    assert (await client.next())["code"] == ErrorCode.INVALID_SETTING
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_stopping_the_server_drains_a_turn_whose_socket_dropped(livetx: Any) -> None:
    server = await livetx(SLOW_ECHO)
    long = " ".join(f"word{n}" for n in range(40))  # two seconds of reply
    _, _, before = await start_turn(server, server.token("ann"), long)
    assert before[-1]["t"] == "bot_delta_chunk"
    await server.stop()  # the turn going on into the journal is finished and stored first
    replies = [row for row in stored_now(server.data_dir) if row[1] == "assistant"]
    assert [(text, interrupted) for _, _, text, interrupted, _ in replies] == [(long, False)]


@pytest_twisted.ensureDeferred
async def test_reconnecting_with_the_same_url_resumes_and_drops_the_fresh_journal(livetx: Any) -> None:
    """Issue 27.9: every reconnecting client opens the URL it had, ``?resume=1`` included."""
    server = await livetx(SLOW_ECHO)
    token = server.token("ann")
    _, session_id, before = await start_turn(server, token)

    again = await connect(server.url("/api/live_chat/ws", token=token, resume="1"))
    fresh = await again.next()
    assert fresh["t"] == "session_updated" and fresh["session_id"] != session_id
    again.send({"t": "resume", "session_id": session_id, "seq": before[-1]["seq"]})
    rest = await again.until("end")
    assert not any(f["t"] == "error" for f in rest)
    numbers = seqs(before) + seqs(rest)
    assert numbers == list(range(1, len(numbers) + 1))

    await settle(0.1)  # the old writer lets go just after its last frame
    more = await again.turn("again")
    assert seqs(more)[0] > numbers[-1]  # the socket carries the resumed session on
    gone = await connect(server.url("/api/live_chat/ws", token=token))
    gone.send({"t": "resume", "session_id": fresh["session_id"], "seq": 0})
    assert (await gone.next())["code"] == ErrorCode.RESUME_EXPIRED  # the fresh journal was discarded
    for client in (again, gone):
        await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_a_refused_resume_on_a_resume_url_keeps_the_fresh_session(livetx: Any) -> None:
    server = await livetx(SLOW_ECHO)
    client = await connect(server.url("/api/live_chat/ws", token=server.token("ann"), resume="1"))
    fresh = await client.next()
    client.send({"t": "resume", "session_id": "nope", "seq": 3})
    assert (await client.next())["code"] == ErrorCode.RESUME_EXPIRED
    frames = await client.turn("hello")
    assert seqs(frames)[0] == 2  # after session_updated, in the fresh journal (a refusal is not numbered)
    assert fresh["session_id"]
    await client.close_and_wait()
