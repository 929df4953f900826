"""API keys and the JWT secret in PostgreSQL, so every node of a cluster sees the same ones.

``livetx keys`` writes through its own connection; a running server checks
keys against a copy in memory that it refreshes every
:data:`REFRESH_SECONDS`: a cheap read of a change counter that every create
and revoke bumps in the same transaction, and the whole table only when the
counter moved.

A key made a moment ago is not in that copy yet: a script that creates a
key and uses it at once must not be refused. So a key the copy lacks is
looked up in the database, by its digest, off the reactor, before it is
refused (:meth:`PostgresKeyStore.lookup`). Bad keys must not hammer the
database: recent misses are remembered (at most :data:`MAX_MISSES`, until
the keys next change), lookups of one digest are shared, and at most
:data:`MAX_LOOKUPS` run at once; past that a key is judged on the copy
alone (the failed-auth limit per address bounds the rest).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.auth.keys import KeyRecord, KeyStore, _digest, _now
from livetx.deferreds import waiter_for
from livetx.store.postgres import Database, connection

_log = Logger()

#: How stale a node's copy of the keys may be, in seconds.
REFRESH_SECONDS = 0.5
#: Digests the database did not know, remembered until the keys change (oldest forgotten first).
MAX_MISSES = 1024
#: Lookups of keys missing from the copy that may wait on the database at once.
MAX_LOOKUPS = 4

_COLUMNS = "id, name, scopes, sha256, prefix, created_at, revoked_at"
_CHANGED = (
    "INSERT INTO livetx_changes (topic, counter) VALUES ('api_keys', 1) "
    "ON CONFLICT (topic) DO UPDATE SET counter = livetx_changes.counter + 1"
)


def _record(row: tuple[Any, ...]) -> KeyRecord:
    return KeyRecord(row[0], row[1], tuple(row[2].split(",")), row[3], row[4], row[5], row[6])


def _counter(conn: Any) -> int:
    row = conn.execute("SELECT counter FROM livetx_changes WHERE topic = 'api_keys'").fetchone()
    return 0 if row is None else int(row[0])


def _snapshot(conn: Any) -> tuple[int, tuple[KeyRecord, ...]]:
    with conn.transaction():
        counter = _counter(conn)
        rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id").fetchall()
    return counter, tuple(_record(row) for row in rows)


class PostgresKeyStore(KeyStore):
    """:class:`KeyStore` with its records in the database at ``url``."""

    def __init__(self, url: str, database: Database | None = None) -> None:
        self.url = url
        self._database = database
        self._counter = -1
        self._records: tuple[KeyRecord, ...] = ()
        self._misses: OrderedDict[str, None] = OrderedDict()
        self._lookups: dict[str, Deferred[None]] = {}

    def _read(self) -> tuple[KeyRecord, ...]:
        with connection(self.url) as conn:
            return _snapshot(conn)[1]

    def _add(self, record: KeyRecord) -> None:
        with connection(self.url) as conn, conn.transaction():
            conn.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (record.id, record.name, ",".join(record.scopes), record.sha256, record.prefix,
                 record.created_at, record.revoked_at),
            )
            conn.execute(_CHANGED)

    def _revoke(self, key_id: str) -> bool:
        with connection(self.url) as conn, conn.transaction():
            done = conn.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL", (_now(), key_id)
            ).rowcount
            conn.execute(_CHANGED)
        return bool(done)

    def _current(self) -> tuple[KeyRecord, ...]:
        return self._records

    def load(self) -> None:
        """Read every key now (at start-up, before the reactor runs)."""
        with connection(self.url) as conn:
            self._counter, self._records = _snapshot(conn)

    def refresh(self) -> Deferred[None]:
        """Bring the copy in memory up to date, off the reactor thread."""
        assert self._database is not None
        seen = self._counter

        def read(conn: Any) -> tuple[int, tuple[KeyRecord, ...]] | None:
            return _snapshot(conn) if _counter(conn) != seen else None

        return self._database.run(read).addCallbacks(self._replace, self._unreachable)

    def lookup(self, key: str | None) -> Deferred[None] | None:
        """Fetch ``key``'s record into the copy if the copy lacks it: fires once it is known either way.

        None when there is nothing to ask: no key, a key the copy has, a
        recent miss, or too many lookups waiting already.
        """
        if not key or self._database is None:
            return None
        digest = _digest(key)
        if digest in self._misses or self.find(key) is not None:
            return None
        if digest not in self._lookups:
            if len(self._lookups) >= MAX_LOOKUPS:
                return None
            counter = self._counter

            def read(conn: Any) -> KeyRecord | None:
                row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE sha256 = %s", (digest,)).fetchone()
                return None if row is None else _record(row)

            found = self._database.run(read).addCallbacks(
                lambda record: self._found(digest, record, counter), self._unreachable)
            found.addBoth(self._done, digest)
            self._lookups[digest] = found
        return waiter_for(self._lookups[digest])

    def _done(self, result: None, digest: str) -> None:
        del self._lookups[digest]

    def _found(self, digest: str, record: KeyRecord | None, counter: int) -> None:
        if record is not None:
            if all(r.id != record.id for r in self._records):
                self._records += (record,)
        elif counter == self._counter:  # a miss is news only while the keys stay as they were
            self._misses[digest] = None
            if len(self._misses) > MAX_MISSES:
                self._misses.popitem(last=False)

    def _unreachable(self, failure: Failure) -> None:
        # Keep the last copy and try again next time (a failure would stop the timer for good).
        _log.warn("Cannot refresh the API keys from the database: {error}", error=failure.getErrorMessage())

    def _replace(self, snapshot: tuple[int, tuple[KeyRecord, ...]] | None) -> None:
        if snapshot is not None:
            self._counter, self._records = snapshot
            self._misses.clear()  # any of them may exist now


def shared_secret(url: str) -> str:
    """The cluster's JWT secret: made by whichever node or command asks first, then kept."""
    with connection(url) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO livetx_secrets (name, value) VALUES ('jwt', %s) ON CONFLICT (name) DO NOTHING",
            (secrets.token_hex(32),),
        )
        (value,) = conn.execute("SELECT value FROM livetx_secrets WHERE name = 'jwt'").fetchone() or ("",)
    return str(value)
