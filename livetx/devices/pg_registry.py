"""The boards' registry in PostgreSQL (``[store] url``), so every node of a cluster sees the same boards.

Like the API keys (:mod:`livetx.auth.pg_keys`): ``livetx devices`` writes
through its own connection; a running server reads a copy in memory that
:class:`livetx.devices.registry.DeviceWatch` refreshes every half second
(a cheap read of a change counter that every write bumps in the same
transaction, and the whole table only when the counter moved), so an
approval or a revocation made anywhere holds on every node within a second,
and a revoked board's open sockets close wherever they are. A board the OTA
endpoint records is written off the reactor, through the store's pool.
Writers take one advisory lock per transaction, as the file's writers take
its ``flock``: two new boards never get the same activation code.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator

from twisted.internet.defer import Deferred

from livetx.devices.registry import Device, DeviceRegistry
from livetx.store.postgres import Database, connection

#: The advisory lock a writer holds ("device" in ASCII).
WRITE_LOCK = 0x646576696365
_FIELDS = [f.name for f in dataclasses.fields(Device)]
_COLUMNS = ", ".join(_FIELDS)
_UPSERT = (
    f"INSERT INTO devices ({_COLUMNS}) VALUES ({', '.join(['%s'] * len(_FIELDS))}) "
    f"ON CONFLICT (device_id) DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in _FIELDS[1:])}"
)
_CHANGED = (
    "INSERT INTO livetx_changes (topic, counter) VALUES ('devices', 1) "
    "ON CONFLICT (topic) DO UPDATE SET counter = livetx_changes.counter + 1"
)


def _counter(conn: Any) -> int:
    row = conn.execute("SELECT counter FROM livetx_changes WHERE topic = 'devices'").fetchone()
    return 0 if row is None else int(row[0])


def _snapshot(conn: Any) -> tuple[int, dict[str, Device]]:
    with conn.transaction():
        counter = _counter(conn)
        rows = conn.execute(f"SELECT {_COLUMNS} FROM devices ORDER BY created").fetchall()
    return counter, {row[0]: Device(*row) for row in rows}


class PostgresDeviceRegistry(DeviceRegistry):
    """:class:`DeviceRegistry` with its boards in the database at ``url``.

    With a ``database`` (the server), reads come from the copy in memory;
    without (the command line), every read asks the database.
    """

    def __init__(self, url: str, database: Database | None = None) -> None:
        self.url = url
        self._database = database
        self._counter = -1
        self._devices: dict[str, Device] = {}

    @property
    def where(self) -> str:
        return "the [store] database"

    def _load(self) -> dict[str, Device]:
        if self._database is None:
            with connection(self.url) as conn:
                return _snapshot(conn)[1]
        return self._devices

    def load(self) -> None:
        """Read every board now (at start-up, before the reactor runs)."""
        with connection(self.url) as conn:
            self._counter, self._devices = _snapshot(conn)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, Device]]:
        with connection(self.url) as conn, _writing(conn) as devices:
            yield devices

    def _later(self, write: Callable[[dict[str, Device]], Device | None]) -> Deferred[Device | None]:
        assert self._database is not None

        def run(conn: Any) -> Device | None:
            with _writing(conn) as devices:
                return write(devices)

        return self._database.run(run).addCallback(lambda device: self.refresh().addCallback(lambda _: device))

    def refresh(self) -> Deferred[None]:
        """Bring the copy in memory up to date, off the reactor thread (the counter first)."""
        assert self._database is not None
        seen = self._counter

        def read(conn: Any) -> tuple[int, dict[str, Device]] | None:
            return _snapshot(conn) if _counter(conn) != seen else None

        return self._database.run(read).addCallback(self._replace)

    def _replace(self, snapshot: tuple[int, dict[str, Device]] | None) -> None:
        if snapshot is not None:
            self._counter, self._devices = snapshot


@contextlib.contextmanager
def _writing(conn: Any) -> Iterator[dict[str, Device]]:
    """Every board, for one writer at a time; the rows that changed are written back, the counter bumped."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        rows = conn.execute(f"SELECT {_COLUMNS} FROM devices").fetchall()
        before = {row[0]: Device(*row) for row in rows}
        devices = dict(before)
        yield devices
        changed = [d for key, d in devices.items() if before.get(key) != d]
        for device in changed:
            conn.execute(_UPSERT, dataclasses.astuple(device))
        if changed:
            conn.execute(_CHANGED)
