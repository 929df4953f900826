"""The SQLite store: ordering, ownership, pagination, and reopening."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from livetx.domain import Exchange
from livetx.errors import SessionForbidden
from livetx.store.conversation import StoredConversation, default_live_session
from livetx.store.sqlite import SQLiteStore


def plain(text: str) -> list[dict[str, str]]:
    return [{"type": "plain", "text": text}]


@pytest_twisted.ensureDeferred
async def test_messages_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    session = await store.open_session("ann", None, "chat")
    assert len(session.id) == 36 and session.username == "ann"
    first = await store.add_message(session.id, "user", plain("hello 你好"), input_type="text")
    second = await store.add_message(
        session.id, "assistant", plain("hi"), interrupted=True, metrics={"llm_ttft": 0.1}
    )
    assert second.id > first.id and first.created_at.endswith("Z")
    await store.close()

    again = SQLiteStore(tmp_path)
    stored = await again.messages(session.id)
    assert [(m.role, m.text, m.interrupted) for m in stored] == [("user", "hello 你好", False), ("assistant", "hi", True)]
    assert stored[1].metrics == {"llm_ttft": 0.1} and stored[0].input_type == "text"
    assert [m.text for m in await again.messages(session.id, limit=1)] == ["hi"]
    reopened = await again.open_session("ann", session.id, "chat")
    assert reopened.title == "hello 你好"
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_session_belongs_to_one_user(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    session = await store.open_session("ann", "shared-id", "chat")
    with pytest.raises(SessionForbidden):
        await store.open_session("bob", session.id, "chat")
    assert await store.owner(session.id) == "ann"
    assert await store.owner("nope") is None
    await store.close()


@pytest_twisted.ensureDeferred
async def test_sessions_are_paged_newest_first(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    ids = []
    for i in range(5):
        session = await store.open_session("ann", f"s{i}", "chat")
        await store.add_message(session.id, "user", plain(f"q{i}"))
        ids.append(session.id)
    await store.open_session("bob", "other", "chat")
    page, total = await store.sessions("ann", 0, 2)
    assert total == 5 and [s.id for s in page] == ["s4", "s3"]
    page, _ = await store.sessions("ann", 4, 2)
    assert [s.id for s in page] == ["s0"]
    assert (await store.sessions("ann", 10, 2)) == ([], 5)
    await store.add_message("s1", "user", plain("bump"))
    page, _ = await store.sessions("ann", 0, 1)
    assert page[0].id == "s1"
    await store.close()


@pytest_twisted.ensureDeferred
async def test_attachments(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    record = await store.add_attachment("ann", "cat.png", "image/png", b"\x89PNG...")
    assert (tmp_path / "attachments" / record.id).read_bytes() == b"\x89PNG..."
    assert await store.attachment(record.id) == record
    assert await store.attachment("missing") is None
    await store.close()


@pytest_twisted.ensureDeferred
async def test_truncate_rewrites_its_own_reply_not_another_sockets(tmp_path: Path) -> None:
    # Two sockets of one user without a session id share "live:ann"; B finishes after A.
    store = SQLiteStore(tmp_path)
    a, b = (StoredConversation(store, "ann", default_live_session("ann")) for _ in range(2))
    await a.opened
    await b.opened
    assert await store.messages("live:ann") == []  # (and out of b.opened's callbacks)
    a.remember(Exchange("from A", "reply to A, in full"), "text", {})
    b.remember(Exchange("from B", "reply to B"), "text", {})
    a.revise(Exchange("from A", "reply to A", interrupted=True))
    a.revise(Exchange("from A", "reply", interrupted=True))  # cut again: the later one wins
    # One thread, first come first served: once this query is answered, the
    # replies' writes have been too, and the revisions chained on them are queued.
    await store.messages("live:ann")
    stored = await store.messages("live:ann")
    assert [(m.text, m.interrupted) for m in stored if m.role == "assistant"] == [
        ("reply", True), ("reply to B", False),
    ]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_work_asked_for_together_commits_together_in_order(tmp_path: Path) -> None:
    """Group commit: one transaction for what queued meanwhile; a failing unit fails alone."""
    store = SQLiteStore(tmp_path)
    await store.open_session("ann", "mine", "chat")
    await store.open_session("bob", "his", "chat")
    transactions = []
    run = store._pool.runInteraction

    def counted(work: object, batch: list[object]) -> object:
        transactions.append(len(batch))
        return run(work, batch)

    store._pool.runInteraction = counted  # type: ignore[method-assign]
    writes = [store.add_message("mine", "user", plain(f"q{i}")) for i in range(30)]
    stolen = store.open_session("ann", "his", "chat")  # bob's: refused inside the batch
    seen = store.messages("mine")  # queued after the writes, so it sees them all
    later = store.add_message("mine", "assistant", plain("a"))
    stored = [await w for w in writes]
    with pytest.raises(SessionForbidden):
        await stolen
    assert [m.text for m in await seen] == [f"q{i}" for i in range(30)]
    assert (await later).id > stored[-1].id > stored[0].id
    assert transactions == [1, 32]  # the first unit alone, then all that queued behind it
    await store.close()

    again = SQLiteStore(tmp_path)
    assert len(await again.messages("mine")) == 31 and await again.owner("his") == "bob"
    await again.close()


@pytest_twisted.ensureDeferred
async def test_close_waits_for_the_queued_work(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    await store.open_session("ann", "mine", "chat")
    writes = [store.add_message("mine", "user", plain(f"q{i}")) for i in range(5)]
    await store.close()
    assert all(w.called for w in writes)
    again = SQLiteStore(tmp_path)
    assert len(await again.messages("mine")) == 5
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_batch_that_cannot_start_fails_alone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    await store.open_session("ann", "mine", "chat")
    run = store._pool.runInteraction

    def broken(work: object, batch: object) -> object:
        store._pool.runInteraction = run  # type: ignore[method-assign]
        raise OSError("disk gone")

    store._pool.runInteraction = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await store.add_message("mine", "user", plain("lost"))
    kept = await store.add_message("mine", "user", plain("kept"))  # the queue still runs
    assert [m.text for m in await store.messages("mine")] == ["kept"] and kept.text == "kept"
    await store.close()
