"""The conversation store's queries, written once for both SQL backends.

A session is named by its owner and its id together: the id is only unique
among one user's sessions, so no one can take an id another user relies on
(``live:carol`` chosen by Alice is Alice's own session). Sessions carry a
number of their own (``num``) that messages refer to.

The SQL here is the common subset of SQLite and PostgreSQL, with ``?``
placeholders; a backend whose driver wants another style converts them
(see :mod:`livetx.store.postgres`). Every statement runs as a unit of
:class:`~livetx.store.batches.GroupCommit`, on the backend's thread.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timezone
from typing import Any, Sequence

import orjson
from twisted.internet.defer import Deferred

from livetx.errors import NoSuchSession
from livetx.store import Part, StoredAttachment, StoredMessage, StoredSession
from livetx.store.batches import GroupCommit, Outcome, Unit

#: The conversation tables, in both dialects: ``{serial}`` is the auto-numbered key's type.
#: SQLite's layout version 2 and PostgreSQL's version 1; a later change is a new migration.
TABLES = """
CREATE TABLE sessions (
    num {serial},
    username TEXT NOT NULL,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (username, id)
);
CREATE INDEX sessions_by_user ON sessions (username, updated_at);
CREATE TABLE messages (
    id {serial},
    session_num BIGINT NOT NULL REFERENCES sessions (num),
    role TEXT NOT NULL,
    parts TEXT NOT NULL,
    created_at TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0,
    input_type TEXT,
    metrics TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX messages_by_session ON messages (session_num, id);
"""

_MESSAGE_COLUMNS = (
    "m.id, s.id AS session_id, m.role, m.parts, m.created_at, m.interrupted, m.input_type, m.metrics"
)
#: The same, read back from a subquery of them.
_RECENT_COLUMNS = "id, session_id, role, parts, created_at, interrupted, input_type, metrics"
_SESSION_COLUMNS = "id, username, kind, title, created_at, updated_at"
_ATTACHMENT_COLUMNS = "id, username, filename, mime, size, created_at"
_SESSION = "SELECT num FROM sessions WHERE username = ? AND id = ?"


def now() -> str:
    """UTC time as ISO 8601 with milliseconds and a ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


def _query(cursor: Any, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    cursor.execute(sql, params)
    return list(cursor.fetchall())


def _operation(cursor: Any, sql: str, params: tuple[Any, ...]) -> None:
    cursor.execute(sql, params)


def _session(cursor: Any, username: str, session_id: str) -> StoredSession | None:
    cursor.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE username = ? AND id = ?", (username, session_id))
    row = cursor.fetchone()
    return None if row is None else StoredSession(*row)


def _open_session(cursor: Any, username: str, session_id: str | None, kind: str) -> StoredSession:
    session_id = session_id or str(uuid.uuid4())
    found = _session(cursor, username, session_id)
    if found is None:
        stamp = now()
        # Another node may create the same session at the same moment: both end up with one row.
        cursor.execute(
            f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, '', ?, ?) "
            "ON CONFLICT (username, id) DO NOTHING",
            (session_id, username, kind, stamp, stamp),
        )
        found = _session(cursor, username, session_id)
    assert found is not None
    return found


def _sessions(cursor: Any, username: str, offset: int, limit: int) -> tuple[list[StoredSession], int]:
    cursor.execute("SELECT COUNT(*) FROM sessions WHERE username = ?", (username,))
    (total,) = cursor.fetchone()
    cursor.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE username = ? "
        # Two updates can share a millisecond: the newest message breaks the tie.
        "ORDER BY updated_at DESC, "
        "(SELECT MAX(id) FROM messages WHERE session_num = sessions.num) DESC, num DESC "
        "LIMIT ? OFFSET ?",
        (username, limit, offset),
    )
    return [StoredSession(*row) for row in cursor.fetchall()], total


def _add_message(
    cursor: Any, username: str, session_id: str, role: str, parts: list[Part],
    interrupted: bool, input_type: str | None, metrics: dict[str, Any],
) -> StoredMessage:
    stamp = now()
    cursor.execute(
        "INSERT INTO messages (session_num, role, parts, created_at, interrupted, input_type, metrics) "
        f"SELECT num, ?, ?, ?, ?, ?, ? FROM sessions WHERE username = ? AND id = ? RETURNING id",
        (role, _json(parts), stamp, int(interrupted), input_type, _json(metrics), username, session_id),
    )
    row = cursor.fetchone()
    if row is None:
        raise NoSuchSession()
    title = _title(parts) if role == "user" else ""
    cursor.execute(
        "UPDATE sessions SET updated_at = ?, title = CASE WHEN title = '' THEN ? ELSE title END "
        "WHERE username = ? AND id = ?",
        (stamp, title, username, session_id),
    )
    return StoredMessage(row[0], session_id, role, parts, stamp, interrupted, input_type, metrics)


def _add_turn(
    cursor: Any, username: str, session_id: str, user: list[Part], reply: list[Part],
    interrupted: bool, input_type: str | None, metrics: dict[str, Any],
) -> tuple[StoredMessage, StoredMessage]:
    """Both messages in one unit: a turn is stored whole or not at all."""
    return (
        _add_message(cursor, username, session_id, "user", user, False, input_type, {}),
        _add_message(cursor, username, session_id, "assistant", reply, interrupted, None, metrics),
    )


class SQLStore:
    """:class:`livetx.store.ConversationStore` on any backend that runs batches of units.

    A backend subclasses this with ``_run_batch`` (one transaction, off the
    reactor thread), ``_keep_attachment``/``_attachment_bytes`` (where the
    bytes of an upload live) and ``_release`` (after the last batch).
    """

    def __init__(self) -> None:
        self._batches = GroupCommit(self._run_batch)

    def _run_batch(self, batch: list[Unit]) -> Deferred[list[Outcome]]:
        raise NotImplementedError

    def _keep_attachment(self, cursor: Any, record: StoredAttachment, data: bytes) -> None:
        raise NotImplementedError

    def _attachment_bytes(self, cursor: Any, attachment_id: str) -> bytes:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def close(self) -> Deferred[None]:
        """Stop after the queued work: the last batch commits, then the backend lets go."""
        return self._batches.idle().addCallback(lambda _: self._release())

    # -- sessions ----------------------------------------------------------

    def open_session(self, username: str, session_id: str | None, kind: str) -> Deferred[StoredSession]:
        return self._batches.unit(_open_session, username, session_id, kind)

    def session(self, username: str, session_id: str) -> Deferred[StoredSession | None]:
        return self._batches.unit(_session, username, session_id)

    def sessions(self, username: str, offset: int, limit: int) -> Deferred[tuple[list[StoredSession], int]]:
        return self._batches.unit(_sessions, username, offset, limit)

    # -- messages ------------------------------------------------------------

    def add_message(
        self,
        username: str,
        session_id: str,
        role: str,
        parts: Sequence[Part],
        *,
        interrupted: bool = False,
        input_type: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Deferred[StoredMessage]:
        return self._batches.unit(
            _add_message, username, session_id, role, list(parts), interrupted, input_type, metrics or {}
        )

    def add_turn(
        self,
        username: str,
        session_id: str,
        user: Sequence[Part],
        reply: Sequence[Part],
        *,
        interrupted: bool = False,
        input_type: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Deferred[tuple[StoredMessage, StoredMessage]]:
        return self._batches.unit(
            _add_turn, username, session_id, list(user), list(reply), interrupted, input_type, metrics or {}
        )

    def replace_reply(self, message_id: int, parts: Sequence[Part], *, interrupted: bool) -> Deferred[None]:
        return self._batches.unit(
            _operation,
            "UPDATE messages SET parts = ?, interrupted = ? WHERE id = ? AND role = 'assistant'",
            (_json(list(parts)), int(interrupted), message_id),
        )

    def messages(self, username: str, session_id: str, limit: int | None = None,
                 max_bytes: int | None = None) -> Deferred[list[StoredMessage]]:
        selected = (
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN sessions s ON s.num = m.session_num "
            "WHERE s.username = ? AND s.id = ?"
        )
        if limit is None:
            d = self._batches.unit(_query, f"{selected} ORDER BY m.id", (username, session_id))
        elif max_bytes is None:
            d = self._batches.unit(
                _query,
                f"SELECT * FROM ({selected} ORDER BY m.id DESC LIMIT ?) AS recent ORDER BY id",
                (username, session_id, limit),
            )
        else:
            d = self._batches.unit(
                _query,
                f"SELECT {_RECENT_COLUMNS} FROM (SELECT recent.*, SUM(LENGTH(parts)) OVER (ORDER BY id DESC) AS "
                f"running FROM ({selected} ORDER BY m.id DESC LIMIT ?) AS recent) AS fitting WHERE running <= ? "
                "ORDER BY id",
                (username, session_id, limit, max_bytes),
            )
        return d.addCallback(lambda rows: [_message(row) for row in rows])

    # -- attachments -----------------------------------------------------------

    def add_attachment(self, username: str, filename: str, mime: str, data: bytes) -> Deferred[StoredAttachment]:
        return self._batches.unit(self._add_attachment, username, filename, mime, data)

    def _add_attachment(self, cursor: Any, username: str, filename: str, mime: str, data: bytes) -> StoredAttachment:
        record = StoredAttachment(secrets.token_hex(12), username, filename, mime, len(data), now())
        cursor.execute(
            f"INSERT INTO attachments ({_ATTACHMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (record.id, record.username, record.filename, record.mime, record.size, record.created_at),
        )
        self._keep_attachment(cursor, record, data)
        return record

    def attachment(self, attachment_id: str) -> Deferred[StoredAttachment | None]:
        d = self._batches.unit(
            _query, f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments WHERE id = ?", (attachment_id,)
        )
        return d.addCallback(lambda rows: StoredAttachment(*rows[0]) if rows else None)

    def attachment_data(self, attachment_id: str) -> Deferred[bytes]:
        return self._batches.unit(self._attachment_bytes, attachment_id)
