"""The conversation store, the same tests on SQLite and on a real PostgreSQL.

Ordering, per-owner session ids, pagination, reopening, group commit, and
what each engine needs on its own (SQLite's old files, PostgreSQL's nodes
starting at once).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor

from livetx.domain import Exchange
from livetx.errors import NoSuchSession
from livetx.store.conversation import StoredConversation, default_live_session
from livetx.store.sql import SQLStore
from livetx.store.sqlite import SQLiteStore

Opener = Callable[[], SQLStore]


def plain(text: str) -> list[dict[str, str]]:
    return [{"type": "plain", "text": text}]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens a store on one database; called again, another store on the same data."""
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path)
    from livetx.store.postgres import Database, PostgresStore, prepare

    url = request.getfixturevalue("postgres_url")
    prepare(url)
    return lambda: PostgresStore(Database(url, reactor))


@pytest_twisted.ensureDeferred
async def test_messages_round_trip_and_survive_reopening(engine: Opener) -> None:
    store = engine()
    session = await store.open_session("ann", None, "chat")
    assert len(session.id) == 36 and session.username == "ann"
    first = await store.add_message("ann", session.id, "user", plain("hello 你好"), input_type="text")
    second = await store.add_message(
        "ann", session.id, "assistant", plain("hi"), interrupted=True, metrics={"llm_ttft": 0.1}
    )
    assert second.id > first.id and first.created_at.endswith("Z")
    await store.close()

    again = engine()
    stored = await again.messages("ann", session.id)
    assert [(m.role, m.text, m.interrupted) for m in stored] == [("user", "hello 你好", False), ("assistant", "hi", True)]
    assert stored[1].metrics == {"llm_ttft": 0.1} and stored[0].input_type == "text"
    assert stored[0].session_id == session.id
    assert [m.text for m in await again.messages("ann", session.id, limit=1)] == ["hi"]
    reopened = await again.open_session("ann", session.id, "chat")
    assert reopened.title == "hello 你好"
    await again.close()


@pytest_twisted.ensureDeferred
async def test_the_newest_messages_within_a_byte_budget(engine: Opener) -> None:
    """A model's context of long turns is never read whole (issue 27.2)."""
    store = engine()
    session = await store.open_session("ann", None, "chat")
    for text in ["a" * 5000, "b" * 100, "c" * 3000, "d" * 100]:
        await store.add_message("ann", session.id, "user", plain(text))
    recent = await store.messages("ann", session.id, limit=4, max_bytes=3200)
    assert [m.text[0] for m in recent] == ["c", "d"]  # the newest whose stored parts (about 30 characters more than the text) fit
    assert [m.text[0] for m in await store.messages("ann", session.id, limit=1, max_bytes=10_000)] == ["d"]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_turn_is_stored_whole_or_not_at_all(engine: Opener) -> None:
    store = engine()
    await store.open_session("ann", "mine", "live")
    question, answer = await store.add_turn(
        "ann", "mine", plain("why?"), plain("because"), interrupted=True, input_type="audio", metrics={"x": 1})
    assert (question.role, answer.role, answer.id) == ("user", "assistant", question.id + 1)
    with pytest.raises(NoSuchSession):
        await store.add_turn("bob", "mine", plain("not his"), plain("session"))
    with pytest.raises(TypeError):  # the reply cannot be written: the question goes too
        await store.add_turn("ann", "mine", plain("lost"), [{"type": "plain", "text": object()}])
    stored = await store.messages("ann", "mine")
    assert [(m.text, m.interrupted, m.input_type, m.metrics) for m in stored] == [
        ("why?", False, "audio", {}), ("because", True, None, {"x": 1})]
    assert await store.messages("bob", "mine") == []
    await store.close()


@pytest_twisted.ensureDeferred
async def test_session_ids_are_per_owner(engine: Opener) -> None:
    """Bob naming Ann's id gets a session of his own; Ann's is untouched (issue 13.3)."""
    store = engine()
    ann = await store.open_session("ann", "live:ann", "live")
    await store.add_message("ann", ann.id, "user", plain("mine"))
    bob = await store.open_session("bob", "live:ann", "live")
    assert (bob.id, bob.username, bob.title) == ("live:ann", "bob", "")
    await store.add_message("bob", "live:ann", "user", plain("squatting"))
    assert [m.text for m in await store.messages("ann", "live:ann")] == ["mine"]
    assert [m.text for m in await store.messages("bob", "live:ann")] == ["squatting"]
    assert (await store.session("ann", "live:ann")).title == "mine"  # type: ignore[union-attr]
    assert await store.session("carol", "live:ann") is None
    with pytest.raises(NoSuchSession):
        await store.add_message("carol", "live:ann", "user", plain("no session of hers"))
    await store.close()


@pytest_twisted.ensureDeferred
async def test_sessions_are_paged_newest_first(engine: Opener) -> None:
    store = engine()
    ids = []
    for i in range(5):
        session = await store.open_session("ann", f"s{i}", "chat")
        await store.add_message("ann", session.id, "user", plain(f"q{i}"))
        ids.append(session.id)
    await store.open_session("bob", "other", "chat")
    page, total = await store.sessions("ann", 0, 2)
    assert total == 5 and [s.id for s in page] == ["s4", "s3"]
    page, _ = await store.sessions("ann", 4, 2)
    assert [s.id for s in page] == ["s0"]
    assert (await store.sessions("ann", 10, 2)) == ([], 5)
    await store.add_message("ann", "s1", "user", plain("bump"))
    page, _ = await store.sessions("ann", 0, 1)
    assert page[0].id == "s1"
    await store.close()


@pytest_twisted.ensureDeferred
async def test_attachments(engine: Opener) -> None:
    store = engine()
    record = await store.add_attachment("ann", "cat.png", "image/png", b"\x89PNG...")
    assert await store.attachment(record.id) == record
    assert await store.attachment("missing") is None
    await store.close()
    again = engine()
    assert await again.attachment_data(record.id) == b"\x89PNG..."
    await again.close()


@pytest_twisted.ensureDeferred
async def test_truncate_rewrites_its_own_reply_not_another_sockets(engine: Opener) -> None:
    # Two sockets of one user without a session id share "live:ann"; B finishes after A.
    store = engine()
    a, b = (StoredConversation(store, "ann", default_live_session("ann")) for _ in range(2))
    await a.opened
    await b.opened
    assert await store.messages("ann", "live:ann") == []  # (and out of b.opened's callbacks)
    a.remember(Exchange("from A", "reply to A, in full"), "text", {})
    b.remember(Exchange("from B", "reply to B"), "text", {})
    a.revise(Exchange("from A", "reply to A", interrupted=True))
    a.revise(Exchange("from A", "reply", interrupted=True))  # cut again: the later one wins
    # One batch at a time, first come first served: once this query is answered, the
    # replies' writes have been too, and the revisions chained on them are queued.
    await store.messages("ann", "live:ann")
    stored = await store.messages("ann", "live:ann")
    assert [(m.text, m.interrupted) for m in stored if m.role == "assistant"] == [
        ("reply", True), ("reply to B", False),
    ]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_work_asked_for_together_commits_together_in_order(engine: Opener) -> None:
    """Group commit: one transaction for what queued meanwhile; a failing unit fails alone."""
    store = engine()
    await store.open_session("ann", "mine", "chat")
    transactions = []
    run = store._batches.run

    def counted(batch: list[Any]) -> Any:
        transactions.append(len(batch))
        return run(batch)

    store._batches.run = counted
    writes = [store.add_message("ann", "mine", "user", plain(f"q{i}")) for i in range(30)]
    stray = store.add_message("bob", "mine", "user", plain("x"))  # bob has no "mine": fails inside the batch
    seen = store.messages("ann", "mine")  # queued after the writes, so it sees them all
    later = store.add_message("ann", "mine", "assistant", plain("a"))
    stored = [await w for w in writes]
    with pytest.raises(NoSuchSession):
        await stray
    assert [m.text for m in await seen] == [f"q{i}" for i in range(30)]
    assert (await later).id > stored[-1].id > stored[0].id
    assert transactions == [1, 32]  # the first unit alone, then all that queued behind it
    await store.close()

    again = engine()
    assert len(await again.messages("ann", "mine")) == 31
    await again.close()


@pytest_twisted.ensureDeferred
async def test_close_waits_for_the_queued_work(engine: Opener) -> None:
    store = engine()
    await store.open_session("ann", "mine", "chat")
    writes = [store.add_message("ann", "mine", "user", plain(f"q{i}")) for i in range(5)]
    await store.close()
    assert all(w.called for w in writes)
    again = engine()
    assert len(await again.messages("ann", "mine")) == 5
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_batch_that_cannot_start_fails_alone(engine: Opener) -> None:
    store = engine()
    await store.open_session("ann", "mine", "chat")
    run = store._batches.run

    def broken(batch: Any) -> Any:
        store._batches.run = run
        raise OSError("disk gone")

    store._batches.run = broken
    with pytest.raises(OSError):
        await store.add_message("ann", "mine", "user", plain("lost"))
    kept = await store.add_message("ann", "mine", "user", plain("kept"))  # the queue still runs
    assert [m.text for m in await store.messages("ann", "mine")] == ["kept"] and kept.text == "kept"
    await store.close()


VERSION_1 = """
CREATE TABLE sessions (id TEXT PRIMARY KEY, username TEXT NOT NULL, kind TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX sessions_by_user ON sessions (username, updated_at);
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL REFERENCES sessions (id),
    role TEXT NOT NULL, parts TEXT NOT NULL, created_at TEXT NOT NULL, interrupted INTEGER NOT NULL DEFAULT 0,
    input_type TEXT, metrics TEXT NOT NULL DEFAULT '{}');
CREATE INDEX messages_by_session ON messages (session_id, id);
CREATE TABLE attachments (id TEXT PRIMARY KEY, username TEXT NOT NULL, filename TEXT NOT NULL,
    mime TEXT NOT NULL, size INTEGER NOT NULL, created_at TEXT NOT NULL);
INSERT INTO sessions VALUES ('live:ann', 'ann', 'live', 'hi', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:01.000Z');
INSERT INTO messages VALUES (7, 'live:ann', 'user', '[{"type":"plain","text":"hi"}]', '2026-01-01T00:00:00.000Z', 0, 'text', '{}');
INSERT INTO messages VALUES (8, 'live:ann', 'assistant', '[{"type":"plain","text":"hello"}]', '2026-01-01T00:00:01.000Z', 1, NULL, '{}');
"""


@pytest_twisted.ensureDeferred
async def test_an_sqlite_file_from_before_per_owner_ids_is_migrated(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "livetx.sqlite3") as old:
        old.executescript(VERSION_1)
    old.close()
    store = SQLiteStore(tmp_path)
    stored = await store.messages("ann", "live:ann")
    assert [(m.id, m.text, m.interrupted) for m in stored] == [(7, "hi", False), (8, "hello", True)]
    assert (await store.sessions("ann", 0, 10))[0][0].title == "hi"
    assert (await store.add_message("ann", "live:ann", "user", plain("again"))).id == 9
    await store.close()


def test_nodes_starting_at_once_migrate_once(postgres_url: str) -> None:
    from livetx.store.postgres import MIGRATIONS, connection, prepare

    errors: list[BaseException] = []

    def node() -> None:
        try:
            prepare(postgres_url)
        except BaseException as e:  # reported below, not lost in a thread
            errors.append(e)

    threads = [threading.Thread(target=node) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with connection(postgres_url) as conn:
        assert conn.execute("SELECT version FROM livetx_schema").fetchall() == [(len(MIGRATIONS),)]
