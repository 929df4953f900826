"""What a turn's storage costs the server process, per store driver (docs/deployment.md "Drivers").

One turn's storage is what the live path asks for: open the session, read
its history, add the user message and the reply. ``--concurrent`` turns are
asked for at once, ``--rounds`` times; group commit batches what queues.
Each variant runs in a process of its own and reports, per turn, the CPU of
the whole process (all threads) and of the reactor thread alone (what other
sockets wait behind), and the wall time of a round:

- ``sqlite``: the embedded default, :class:`livetx.store.sqlite.SQLiteStore`.
- ``threads``: :class:`livetx.store.postgres.PostgresStore`, psycopg's
  synchronous pool on a Twisted thread pool (the chosen driver).
- ``asyncio``: the alternative, psycopg's ``AsyncConnection`` on Twisted's
  asyncio reactor, issuing the same statements in the same batches.

It starts a throw-away PostgreSQL like the tests do (``initdb`` on PATH or in
/usr/lib/postgresql/*/bin):

    python benchmarks/store_bench.py --concurrent 20 --rounds 50
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def variant(name: str, url: str, concurrent: int, rounds: int) -> dict[str, Any]:
    """Run in a child process: install the reactor, store ``rounds`` × ``concurrent`` turns."""
    if name == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, DeferredList, ensureDeferred

    sys.path.insert(0, str(ROOT))
    from livetx.store.sql import SQLStore

    store: Any
    if name == "sqlite":
        from livetx.store.sqlite import SQLiteStore

        store = SQLiteStore(Path(tempfile.mkdtemp()))
    elif name == "threads":
        from livetx.store.postgres import Database, PostgresStore

        store = PostgresStore(Database(url, reactor))
    else:
        store = _AsyncStore(url, reactor)

    def turn(user: str) -> Deferred[Any]:
        store.open_session(user, f"live:{user}", "live")
        store.messages(user, f"live:{user}", 40)
        store.add_message(user, f"live:{user}", "user", [{"type": "plain", "text": "hello"}])
        return store.add_message(user, f"live:{user}", "assistant", [{"type": "plain", "text": "hi " * 40}])

    result: dict[str, Any] = {}

    async def run() -> None:
        await DeferredList([turn(f"warm{i}") for i in range(concurrent)])
        cpu, thread, walls = _cpu(), time.thread_time(), []
        for r in range(rounds):
            started = time.perf_counter()
            await DeferredList([turn(f"u{r}-{i}") for i in range(concurrent)], fireOnOneErrback=True)
            walls.append(time.perf_counter() - started)
        turns = concurrent * rounds
        result.update(
            variant=name, turns=turns,
            cpu_ms_per_turn=round((_cpu() - cpu) * 1000 / turns, 3),
            reactor_ms_per_turn=round((time.thread_time() - thread) * 1000 / turns, 3),
            round_ms_median=round(sorted(walls)[len(walls) // 2] * 1000, 2),
        )
        await store.close()

    def done(_: Any) -> None:
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(run()).addBoth(done))
    reactor.run()
    assert isinstance(store, (SQLStore, _AsyncStore))
    return result


class _AsyncStore:
    """The same statements through psycopg's async API (for comparison only), grouped the same way."""

    def __init__(self, url: str, reactor: Any) -> None:
        from livetx.store.batches import GroupCommit

        self._url = url
        self._conn: Any = None
        self._batches = GroupCommit(self._run)

    def _run(self, batch: list[Any]) -> Any:
        import asyncio

        from twisted.internet.defer import Deferred

        return Deferred.fromFuture(asyncio.ensure_future(self._apply(batch)))

    async def _apply(self, batch: list[Any]) -> list[tuple[bool, Any]]:
        import psycopg

        from livetx.store import sql

        if self._conn is None:
            self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        outcomes: list[tuple[bool, Any]] = []
        async with self._conn.transaction():
            cursor = self._conn.cursor()
            for work, args, _ in batch:
                await cursor.execute("SAVEPOINT unit")
                # The shared units are written for a blocking cursor: replay their statements.
                recorder = _Recorder()
                value = work(recorder, *args) if work is not sql._add_message else None
                for statement, params in recorder.statements:
                    await cursor.execute(statement.replace("?", "%s"), params)
                if work is sql._add_message:
                    username, session_id, role, parts = args[:4]
                    await cursor.execute(
                        "INSERT INTO messages (session_num, role, parts, created_at, interrupted, input_type, "
                        "metrics) SELECT num, %s, %s, %s, 0, NULL, '{}' FROM sessions "
                        "WHERE username = %s AND id = %s RETURNING id",
                        (role, sql._json(parts), sql.now(), username, session_id),
                    )
                    await cursor.fetchone()
                    await cursor.execute(
                        "UPDATE sessions SET updated_at = %s WHERE username = %s AND id = %s",
                        (sql.now(), username, session_id),
                    )
                await cursor.execute("RELEASE SAVEPOINT unit")
                outcomes.append((True, value))
        return outcomes

    def open_session(self, user: str, session_id: str, kind: str) -> Any:
        return self._batches.unit(_open_session_statements, user, session_id, kind)

    def messages(self, user: str, session_id: str, limit: int) -> Any:
        return self._batches.unit(_history_statement, user, session_id, limit)

    def add_message(self, user: str, session_id: str, role: str, parts: list[Any]) -> Any:
        from livetx.store import sql

        return self._batches.unit(sql._add_message, user, session_id, role, parts)

    async def close(self) -> None:
        await self._batches.idle()
        if self._conn is not None:
            await self._conn.close()


class _Recorder:
    def __init__(self) -> None:
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        self.statements.append((statement, params))


def _open_session_statements(cursor: Any, user: str, session_id: str, kind: str) -> None:
    from livetx.store import sql

    stamp = sql.now()
    cursor.execute(
        "INSERT INTO sessions (id, username, kind, title, created_at, updated_at) VALUES (?, ?, ?, '', ?, ?) "
        "ON CONFLICT (username, id) DO NOTHING", (session_id, user, kind, stamp, stamp))
    cursor.execute("SELECT id, username, kind, title, created_at, updated_at FROM sessions "
                   "WHERE username = ? AND id = ?", (user, session_id))


def _history_statement(cursor: Any, user: str, session_id: str, limit: int) -> None:
    cursor.execute(
        "SELECT m.id FROM messages m JOIN sessions s ON s.num = m.session_num WHERE s.username = ? AND s.id = ? "
        "ORDER BY m.id DESC LIMIT ?", (user, session_id, limit))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(variant(args.variant, args.url, args.concurrent, args.rounds)))
        return

    sys.path.insert(0, str(ROOT))
    from tests.services import PostgreSQL

    from livetx.store.postgres import prepare

    database = PostgreSQL(durable=True).start()
    try:
        for name in ("sqlite", "threads", "asyncio"):
            url = database.database()
            prepare(url)
            out = subprocess.run(
                [sys.executable, __file__, "--variant", name, "--url", url,
                 "--concurrent", str(args.concurrent), "--rounds", str(args.rounds)],
                capture_output=True, text=True, check=True,
            )
            print(out.stdout.strip().splitlines()[-1])
    finally:
        database.stop()


if __name__ == "__main__":
    main()
