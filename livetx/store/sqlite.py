"""The embedded store: SQLite in the data dir, through ``twisted.enterprise.adbapi``.

One database connection on one thread: work is applied in the order it was
asked for, and no query ever runs on the reactor thread. WAL with
``synchronous=FULL`` means a write whose Deferred has fired survives the
process being killed, and the machine losing power. The pool (its thread,
and SQLite itself) starts on the first query, so an idle server holds none
of it.

Group commit: whatever was asked for while the previous transaction ran
goes into the next one, each unit in its own savepoint (one failing unit
rolls back alone), and every Deferred of the batch fires after its single
commit. Twenty turns ending at once then cost one flush to disk instead of
forty, and a socket's history query no longer queues behind them.
"""

from __future__ import annotations

import functools
import secrets
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import orjson
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

from livetx.errors import SessionForbidden
from livetx.store import Part, StoredAttachment, StoredMessage, StoredSession

if TYPE_CHECKING:
    import sqlite3

    from twisted.enterprise import adbapi

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (username, updated_at);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    role TEXT NOT NULL,
    parts TEXT NOT NULL,
    created_at TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0,
    input_type TEXT,
    metrics TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id, id);
CREATE TABLE IF NOT EXISTS attachments (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    filename TEXT NOT NULL,
    mime TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
"""

_MESSAGE_COLUMNS = "id, session_id, role, parts, created_at, interrupted, input_type, metrics"
_SESSION_COLUMNS = "id, username, kind, title, created_at, updated_at"


def now() -> str:
    """UTC time as ISO 8601 with milliseconds and a ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _prepare(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.executescript(SCHEMA)


_T = TypeVar("_T")
_Unit = tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]

#: Units in one transaction at most: a unit's Deferred waits for its batch's commit.
MAX_BATCH = 100


def _query(cursor: Any, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    cursor.execute(sql, params)
    rows: list[tuple[Any, ...]] = cursor.fetchall()
    return rows


def _operation(cursor: Any, sql: str, params: tuple[Any, ...]) -> None:
    cursor.execute(sql, params)


def _apply(cursor: Any, batch: list[_Unit]) -> list[tuple[bool, Any]]:
    """Run a batch as one transaction, each unit in its own savepoint."""
    cursor.execute("BEGIN")
    outcomes: list[tuple[bool, Any]] = []
    for work, args, _ in batch:
        cursor.execute("SAVEPOINT unit")
        try:
            outcomes.append((True, work(cursor, *args)))
        except Exception:
            cursor.execute("ROLLBACK TO unit")
            failure = Failure()
            failure.cleanFailure()
            outcomes.append((False, failure))
        cursor.execute("RELEASE unit")
    return outcomes


def _json(value: Any) -> str:
    """Compact JSON text (orjson: a socket's history is parsed on the reactor)."""
    return orjson.dumps(value).decode("utf-8")


def _message(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(
        id=row[0], session_id=row[1], role=row[2], parts=orjson.loads(row[3]), created_at=row[4],
        interrupted=bool(row[5]), input_type=row[6], metrics=orjson.loads(row[7]),
    )


def _title(parts: Sequence[Part]) -> str:
    text = " ".join(p.get("text", "") for p in parts if p.get("type") == "plain").strip()
    return text[:80]


class SQLiteStore:
    """:class:`livetx.store.ConversationStore` on one SQLite file."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "livetx.sqlite3"
        self.attachments_dir = data_dir / "attachments"
        self._queue: list[_Unit] = []
        self._running = False
        self._idle: list[Deferred[None]] = []

    @functools.cached_property
    def _pool(self) -> adbapi.ConnectionPool:
        """Made on first use: importing SQLite and starting a thread cost an idle server memory."""
        from twisted.enterprise import adbapi

        return adbapi.ConnectionPool(
            "sqlite3", str(self.path), check_same_thread=False, cp_min=1, cp_max=1,
            cp_openfun=_prepare, cp_noisy=False,
        )

    def close(self) -> Deferred[None]:
        """Stop after the queued work: the last batch commits, then the pool's thread ends."""
        if not self._running:
            self._close_pool()
            return succeed(None)
        idle: Deferred[None] = Deferred()
        self._idle.append(idle)
        return idle.addCallback(lambda _: self._close_pool())

    def _close_pool(self) -> None:
        pool = self.__dict__.get("_pool")  # never used: nothing to close
        if pool is not None:
            pool.close()

    def _unit(self, work: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Queue ``work(cursor, *args)``; it runs in the next transaction."""
        done: Deferred[_T] = Deferred()
        self._queue.append((work, args, done))
        if not self._running:
            self._next_batch()
        return done

    def _next_batch(self) -> None:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        self._running = True
        # maybeDeferred: a pool that cannot even start fails this batch, not the queue for good
        maybeDeferred(self._pool.runInteraction, _apply, batch).addBoth(self._settle, batch)

    def _settle(self, outcomes: list[tuple[bool, Any]] | Failure, batch: list[_Unit]) -> None:
        if isinstance(outcomes, Failure):  # the commit itself failed: so did every unit
            outcomes = [(False, outcomes)] * len(batch)
        if self._queue:
            self._next_batch()  # before the callbacks, which may queue more
        else:
            self._running = False
        for (ok, value), (_, _, done) in zip(outcomes, batch):
            if ok:
                done.callback(value)
            else:
                done.errback(value)
        if not self._running:
            idle, self._idle = self._idle, []
            for waiting in idle:
                waiting.callback(None)

    # -- sessions ----------------------------------------------------------

    def open_session(self, username: str, session_id: str | None, kind: str) -> Deferred[StoredSession]:
        return self._unit(self._open_session, username, session_id, kind)

    def _open_session(self, cursor: Any, username: str, session_id: str | None, kind: str) -> StoredSession:
        session_id = session_id or str(uuid.uuid4())
        cursor.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,))
        row = cursor.fetchone()
        if row is None:
            stamp = now()
            row = (session_id, username, kind, "", stamp, stamp)
            cursor.execute(f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", row)
        if row[1] != username:
            raise SessionForbidden()
        return StoredSession(*row)

    def owner(self, session_id: str) -> Deferred[str | None]:
        d = self._unit(_query, "SELECT username FROM sessions WHERE id = ?", (session_id,))
        return d.addCallback(lambda rows: rows[0][0] if rows else None)

    def sessions(self, username: str, offset: int, limit: int) -> Deferred[tuple[list[StoredSession], int]]:
        return self._unit(self._sessions, username, offset, limit)

    def _sessions(self, cursor: Any, username: str, offset: int, limit: int) -> tuple[list[StoredSession], int]:
        cursor.execute("SELECT COUNT(*) FROM sessions WHERE username = ?", (username,))
        (total,) = cursor.fetchone()
        cursor.execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE username = ? "
            # Two updates can share a millisecond: the newest message breaks the tie.
            "ORDER BY updated_at DESC, "
            "(SELECT MAX(id) FROM messages WHERE session_id = sessions.id) DESC, rowid DESC "
            "LIMIT ? OFFSET ?",
            (username, limit, offset),
        )
        return [StoredSession(*row) for row in cursor.fetchall()], total

    # -- messages ------------------------------------------------------------

    def add_message(
        self,
        session_id: str,
        role: str,
        parts: Sequence[Part],
        *,
        interrupted: bool = False,
        input_type: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Deferred[StoredMessage]:
        return self._unit(
            self._add_message, session_id, role, list(parts), interrupted, input_type, metrics or {}
        )

    def _add_message(
        self, cursor: Any, session_id: str, role: str, parts: list[Part],
        interrupted: bool, input_type: str | None, metrics: dict[str, Any],
    ) -> StoredMessage:
        stamp = now()
        cursor.execute(
            "INSERT INTO messages (session_id, role, parts, created_at, interrupted, input_type, metrics) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session_id, role, _json(parts), stamp, int(interrupted), input_type, _json(metrics)),
        )
        message_id = cursor.lastrowid
        if role == "user":
            cursor.execute(
                "UPDATE sessions SET updated_at = ?, title = CASE WHEN title = '' THEN ? ELSE title END "
                "WHERE id = ?",
                (stamp, _title(parts), session_id),
            )
        else:
            cursor.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (stamp, session_id))
        return StoredMessage(message_id, session_id, role, parts, stamp, interrupted, input_type, metrics)

    def add_turn(
        self,
        session_id: str,
        user: Sequence[Part],
        reply: Sequence[Part],
        *,
        interrupted: bool = False,
        input_type: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Deferred[tuple[StoredMessage, StoredMessage]]:
        return self._unit(
            self._add_turn, session_id, list(user), list(reply), interrupted, input_type, metrics or {}
        )

    def _add_turn(
        self, cursor: Any, session_id: str, user: list[Part], reply: list[Part],
        interrupted: bool, input_type: str | None, metrics: dict[str, Any],
    ) -> tuple[StoredMessage, StoredMessage]:
        return (
            self._add_message(cursor, session_id, "user", user, False, input_type, {}),
            self._add_message(cursor, session_id, "assistant", reply, interrupted, None, metrics),
        )

    def replace_reply(self, message_id: int, parts: Sequence[Part], *, interrupted: bool) -> Deferred[None]:
        return self._unit(
            _operation,
            "UPDATE messages SET parts = ?, interrupted = ? WHERE id = ? AND role = 'assistant'",
            (_json(list(parts)), int(interrupted), message_id),
        )

    def messages(self, session_id: str, limit: int | None = None) -> Deferred[list[StoredMessage]]:
        if limit is None:
            d = self._unit(
                _query, f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? ORDER BY id", (session_id,)
            )
        else:
            d = self._unit(
                _query,
                f"SELECT * FROM (SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? "
                "ORDER BY id DESC LIMIT ?) ORDER BY id",
                (session_id, limit),
            )
        return d.addCallback(lambda rows: [_message(row) for row in rows])

    # -- attachments -----------------------------------------------------------

    def add_attachment(self, username: str, filename: str, mime: str, data: bytes) -> Deferred[StoredAttachment]:
        return self._unit(self._add_attachment, username, filename, mime, data)

    def _add_attachment(self, cursor: Any, username: str, filename: str, mime: str, data: bytes) -> StoredAttachment:
        record = StoredAttachment(secrets.token_hex(12), username, filename, mime, len(data), now())
        self.attachments_dir.mkdir(parents=True, exist_ok=True)
        (self.attachments_dir / record.id).write_bytes(data)
        cursor.execute(
            "INSERT INTO attachments (id, username, filename, mime, size, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (record.id, record.username, record.filename, record.mime, record.size, record.created_at),
        )
        return record

    def attachment_data(self, attachment_id: str) -> Deferred[bytes]:
        return self._unit(lambda _: (self.attachments_dir / attachment_id).read_bytes())

    def attachment(self, attachment_id: str) -> Deferred[StoredAttachment | None]:
        d = self._unit(
            _query,
            "SELECT id, username, filename, mime, size, created_at FROM attachments WHERE id = ?",
            (attachment_id,),
        )
        return d.addCallback(lambda rows: StoredAttachment(*rows[0]) if rows else None)
