"""The embedded store: SQLite in the data dir, through ``twisted.enterprise.adbapi``.

One database connection on one thread: work is applied in the order it was
asked for, and no query ever runs on the reactor thread. WAL with
``synchronous=FULL`` means a write whose Deferred has fired survives the
process being killed, and the machine losing power. The pool (its thread,
and SQLite itself) starts on the first query, so an idle server holds none
of it. Group commit is :mod:`livetx.store.batches`; the queries are
:mod:`livetx.store.sql`. Uploaded files are kept beside the database.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from livetx.store import StoredAttachment
from livetx.store.batches import Outcome, Unit, apply_units
from livetx.store.sql import TABLES, SQLStore

if TYPE_CHECKING:
    import sqlite3

    from twisted.enterprise import adbapi

#: The current layout (``PRAGMA user_version``); :data:`SCOPE_SESSIONS` brings version 1 up to it.
SCHEMA_VERSION = 2

_TABLES = TABLES.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT")
SCHEMA = _TABLES + """
CREATE TABLE IF NOT EXISTS attachments (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    filename TEXT NOT NULL,
    mime TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
"""

#: Version 1 (before session ids were scoped per owner) to 2: the same rows, sessions renumbered.
SCOPE_SESSIONS = """
ALTER TABLE sessions RENAME TO sessions_v1;
ALTER TABLE messages RENAME TO messages_v1;
DROP INDEX IF EXISTS sessions_by_user;
DROP INDEX IF EXISTS messages_by_session;
""" + _TABLES + """
INSERT INTO sessions (username, id, kind, title, created_at, updated_at)
    SELECT username, id, kind, title, created_at, updated_at FROM sessions_v1 ORDER BY rowid;
INSERT INTO messages (id, session_num, role, parts, created_at, interrupted, input_type, metrics)
    SELECT m.id, s.num, m.role, m.parts, m.created_at, m.interrupted, m.input_type, m.metrics
    FROM messages_v1 m JOIN sessions s ON s.id = m.session_id ORDER BY m.id;
DROP TABLE messages_v1;
DROP TABLE sessions_v1;
"""


def _migrate(connection: sqlite3.Connection) -> None:
    """Create or upgrade the layout in one transaction (one process owns the file)."""
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    script = SCOPE_SESSIONS if "sessions" in tables else SCHEMA
    # executescript commits first and runs in autocommit: wrap it in our own transaction.
    connection.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")


def _prepare(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    _migrate(connection)  # before foreign keys are checked: version 1's tables are renamed
    connection.execute("PRAGMA foreign_keys=ON")


def _apply(cursor: Any, batch: list[Unit]) -> list[Outcome]:
    cursor.execute("BEGIN")  # adbapi commits once this returns
    return apply_units(cursor, batch)


class SQLiteStore(SQLStore):
    """:class:`livetx.store.ConversationStore` on one SQLite file."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self.path = data_dir / "livetx.sqlite3"
        self.attachments_dir = data_dir / "attachments"

    @functools.cached_property
    def _pool(self) -> adbapi.ConnectionPool:
        """Made on first use: importing SQLite and starting a thread cost an idle server memory."""
        from twisted.enterprise import adbapi

        return adbapi.ConnectionPool(
            "sqlite3", str(self.path), check_same_thread=False, cp_min=1, cp_max=1,
            cp_openfun=_prepare, cp_noisy=False,
        )

    def _run_batch(self, batch: list[Unit]) -> Deferred[list[Outcome]]:
        running: Deferred[list[Outcome]] = self._pool.runInteraction(_apply, batch)
        return running

    def _release(self) -> None:
        pool = self.__dict__.get("_pool")  # never used: nothing to close
        if pool is not None:
            pool.close()

    def _keep_attachment(self, cursor: Any, record: StoredAttachment, data: bytes) -> None:
        self.attachments_dir.mkdir(parents=True, exist_ok=True)
        (self.attachments_dir / record.id).write_bytes(data)

    def _attachment_bytes(self, cursor: Any, attachment_id: str) -> bytes:
        return (self.attachments_dir / attachment_id).read_bytes()
