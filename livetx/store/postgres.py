"""PostgreSQL, for several processes and machines (``[store] url``): the psycopg fence.

This is the only module that imports psycopg, and it is imported only when a
URL is configured, so the embedded SQLite default neither loads nor pays for
it. The driver is psycopg 3 with psycopg_pool's synchronous pool, run on a
small Twisted thread pool of our own (``deferToThreadPool``): the reactor
thread never waits for the database, and the rest of the server keeps its
default reactor (psycopg's async API would need Twisted's asyncio reactor
for everything; docs/deployment.md "Drivers" has the measurements).

Group commit and the queries are shared with SQLite (:mod:`livetx.store.batches`,
:mod:`livetx.store.sql`): one batch at a time on one connection, each unit in
a savepoint, every Deferred after the one ``COMMIT``. PostgreSQL's default
``synchronous_commit = on`` makes a fired Deferred mean the WAL is on disk.
The pool checks a connection before lending it, so a database that restarted
costs the next batch a reconnect rather than a failure.

The schema is created and migrated at start-up, in one transaction holding
an advisory lock, so any number of nodes may start at once: the first
migrates, the others wait for it and then find nothing to do.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager, suppress
from typing import Any, Callable, Iterator, TypeVar

import psycopg
import psycopg_pool
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from livetx.errors import StoreUnavailable
from livetx.store import StoredAttachment
from livetx.store.batches import Outcome, Unit, apply_units
from livetx.store.sql import TABLES, SQLStore

_T = TypeVar("_T")

#: Seconds to open a connection.
CONNECT_TIMEOUT = 5.0
#: Seconds a unit of work waits for a connection before it fails (the database is away).
POOL_TIMEOUT = 3.0
#: Seconds the pool keeps retrying a lost connection in the background, backing off;
#: after that it connects again when work asks, so a database that comes back is used
#: again within seconds rather than after the pool's long backoff.
RECONNECT_SECONDS = 5.0
#: Connections per process: one runs the batches, one answers key refreshes and probes.
POOL_SIZE = 2
#: The advisory lock migrations hold ("livetx" in ASCII).
MIGRATION_LOCK = 0x6C6976657478

#: ``MIGRATIONS[n]`` brings the schema from version n to n + 1.
MIGRATIONS = [
    TABLES.format(serial="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY") + """
    CREATE TABLE attachments (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        filename TEXT NOT NULL,
        mime TEXT NOT NULL,
        size BIGINT NOT NULL,
        created_at TEXT NOT NULL,
        data BYTEA
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT,
        scopes TEXT NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE livetx_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE livetx_changes (topic TEXT PRIMARY KEY, counter BIGINT NOT NULL);
    """,
    # The xiaozhi boards' registry (livetx.devices.pg_registry), shared by every node.
    """
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        state TEXT NOT NULL,
        code TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        board TEXT NOT NULL,
        reboot DOUBLE PRECISION NOT NULL,
        challenge TEXT NOT NULL
    );
    """,
]


def describe(url: str) -> str:
    """Where a URL points, without its password: for log lines and errors."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an unparsable PostgreSQL URL"
    host = info.get("host") or "localhost"
    return f"postgresql://{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def migrate(connection: psycopg.Connection[Any]) -> int:
    """Bring the schema to the latest version; safe when many processes do it at once."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS livetx_schema (version INTEGER NOT NULL)")
        row = connection.execute("SELECT version FROM livetx_schema").fetchone()
        version = 0 if row is None else int(row[0])
        if version > len(MIGRATIONS):
            raise StoreUnavailable(f"the database's schema (version {version}) is newer than this livetx")
        for script in MIGRATIONS[version:]:
            connection.execute(script)
        if row is None:
            connection.execute("INSERT INTO livetx_schema (version) VALUES (%s)", (len(MIGRATIONS),))
        else:
            connection.execute("UPDATE livetx_schema SET version = %s", (len(MIGRATIONS),))
    return len(MIGRATIONS)


@contextmanager
def connection(url: str) -> Iterator[psycopg.Connection[Any]]:
    """One direct connection, for start-up and the ``livetx`` command (not the reactor)."""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT))
    except psycopg.Error as e:
        raise StoreUnavailable(f"cannot connect to {describe(url)}: {_first_line(e)}") from None
    with conn:
        yield conn


def prepare(url: str) -> None:
    """Connect and migrate, or fail with one line saying why (at start-up)."""
    with connection(url) as conn:
        try:
            migrate(conn)
        except psycopg.Error as e:
            raise StoreUnavailable(f"cannot prepare {describe(url)}: {_first_line(e)}") from None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class _QmarkCursor:
    """The shared queries' ``?`` placeholders, as psycopg's ``%s``."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: tuple[Any, ...] | None = None) -> None:
        self._cursor.execute(_placeholders(sql), params or None)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


@functools.lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    return sql.replace("?", "%s")


class Database:
    """A connection pool on a thread pool: ``run(work)`` calls ``work(connection)`` off the reactor.

    Both start on first use and stop in :meth:`close`, like SQLite's pool.
    """

    def __init__(self, url: str, reactor: Any) -> None:
        self.url = url
        self._reactor = reactor
        self._threads: ThreadPool | None = None
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._trigger: Any = None

    def _start(self) -> ThreadPool:
        if self._threads is None:
            self._threads = ThreadPool(minthreads=0, maxthreads=POOL_SIZE, name="livetx-postgres")
            self._threads.start()
            self._pool = psycopg_pool.ConnectionPool(
                self.url, min_size=1, max_size=POOL_SIZE, open=False, timeout=POOL_TIMEOUT,
                reconnect_timeout=RECONNECT_SECONDS,
                kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT)},
                check=psycopg_pool.ConnectionPool.check_connection, name="livetx",
            )
            self._pool.open(wait=False)  # connects in the pool's own threads
            # Threads that outlive the reactor would keep the process from exiting.
            self._trigger = self._reactor.addSystemEventTrigger("during", "shutdown", self.close)
        return self._threads

    def run(self, work: Callable[[psycopg.Connection[Any]], _T]) -> Deferred[_T]:
        threads = self._start()
        return deferToThreadPool(self._reactor, threads, self._lend, work)

    def _lend(self, work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        assert self._pool is not None
        try:
            with self._pool.connection() as conn:
                return work(conn)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            raise StoreUnavailable(f"{describe(self.url)} is unavailable: {_first_line(e)}") from None

    def ping(self) -> Deferred[None]:
        """Fires when the database answers a query; fails otherwise (for ``/readyz``)."""
        return self.run(_ping)

    def close(self) -> None:
        threads, pool, self._threads, self._pool = self._threads, self._pool, None, None
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            with suppress(ValueError):  # already taken off: the shutdown is calling us
                self._reactor.removeSystemEventTrigger(trigger)
        if threads is not None:
            threads.stop()
        if pool is not None:
            pool.close()


def _ping(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT 1")


def _transaction(batch: list[Unit], conn: psycopg.Connection[Any]) -> list[Outcome]:
    with conn.transaction():
        return apply_units(_QmarkCursor(conn.cursor()), batch)


class PostgresStore(SQLStore):
    """:class:`livetx.store.ConversationStore` on a PostgreSQL database shared by every node.

    Attachments' bytes are kept in the database too, so any node can read
    what was uploaded through another.
    """

    def __init__(self, database: Database) -> None:
        super().__init__()
        self.database = database

    def _run_batch(self, batch: list[Unit]) -> Deferred[list[Outcome]]:
        return self.database.run(functools.partial(_transaction, batch))

    def _release(self) -> None:
        self.database.close()

    def _keep_attachment(self, cursor: Any, record: StoredAttachment, data: bytes) -> None:
        cursor.execute("UPDATE attachments SET data = ? WHERE id = ?", (data, record.id))

    def _attachment_bytes(self, cursor: Any, attachment_id: str) -> bytes:
        cursor.execute("SELECT data FROM attachments WHERE id = ?", (attachment_id,))
        row = cursor.fetchone()
        if row is None:
            raise FileNotFoundError(attachment_id)
        return bytes(row[0])

