"""A shutdown that hangs still ends the process, saying what it waited for (issue 27, item 5)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest_twisted
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from livetx.auth.pg_keys import PostgresKeyStore
from livetx.lastresort import EXIT_MARGIN, GAVE_UP, StoppingRoot

from .services import PostgreSQL
from .support import connect
from .test_live_ws import OPEN_API
from .test_shutdown import SLOW_ECHO, Twistd


class Timer:
    def __init__(self, seconds: float, call: Callable[[], None]) -> None:
        self.seconds, self.call, self.cancelled = seconds, call, False

    def cancel(self) -> None:
        self.cancelled = True


class Reactor(MemoryReactorClock):
    def callFromThread(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        call(*args, **kwargs)

    def shut_down(self) -> None:
        """What SIGTERM does first: the before-shutdown triggers."""
        for call, args, kwargs in self.triggers["before"]["shutdown"]:
            call(*args, **kwargs)


class Stopping(Service):
    """A child whose stop finishes when the test says so (or never)."""

    def __init__(self, name: str) -> None:
        self.setName(name)
        self.stopping: Deferred[None] = Deferred()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stopping


def root_with(*names: str) -> tuple[StoppingRoot, Reactor, list[Timer], list[int], list[Stopping]]:
    timers: list[Timer] = []
    exits: list[int] = []
    fake = Reactor()

    def start(seconds: float, call: Callable[[], None]) -> Timer:
        timers.append(Timer(seconds, call))
        return timers[-1]

    root = StoppingRoot(12.0, fake, start_timer=start, exit=exits.append)
    children = [Stopping(name) for name in names]
    for child in children:
        child.setServiceParent(root)
    root.startService()
    return root, fake, timers, exits, children


def test_a_hung_shutdown_exits_at_the_deadline_naming_what_it_waited_for() -> None:
    root, fake, timers, exits, (store, connections) = root_with("store", "connections")
    fake.shut_down()
    root.stopService()
    store.stopping.callback(None)
    assert [t.seconds for t in timers] == [12.0] and exits == []
    with capturedLogs() as events:
        timers[0].call()  # the deadline, grace plus margin after SIGTERM
    assert exits == [GAVE_UP]
    said = formatEvent(events[-1])
    assert "services not stopped: connections;" in said and "store" not in said


def test_the_watch_outlives_a_quick_stop_while_the_process_ends() -> None:
    """The reactor joins its threads after the services stopped: that may hang too."""
    root, fake, timers, exits, (store,) = root_with("store")
    root.stopService()
    store.stopping.callback(None)
    fake.shut_down()
    assert timers and not timers[-1].cancelled
    timers[-1].call()
    assert exits == [GAVE_UP]


def test_a_server_stopped_in_process_is_never_exited() -> None:
    root, fake, timers, exits, (store,) = root_with("store")
    root.stopService()
    with capturedLogs() as events:
        timers[0].call()  # still stopping at the deadline: said, but the process lives on
    assert exits == [] and "services not stopped: store" in formatEvent(events[-1])
    store.stopping.callback(None)
    root.startService()
    root.stopService()
    assert timers[-1].cancelled  # stopped in time: nothing more to watch


@pytest_twisted.ensureDeferred
async def test_sigterm_exits_although_the_database_stopped_answering(tmp_path: Path) -> None:
    """PostgreSQL frozen mid-write (SIGSTOP): the drain waits on a store that never answers."""
    database = PostgreSQL().start()
    server = None
    try:
        url = database.database()
        server = Twistd(tmp_path, SLOW_ECHO + f'[server]\nshutdown_grace = 1\n[store]\nurl = "{url}"\n')
        key = PostgresKeyStore(url).create(["chat"])[1]  # the JWT secret is the database's, not the data dir's
        client = await connect(f"ws://127.0.0.1:{server.port}{OPEN_API}?api_key={key}&username=ann")
        await client.turn("one")
        frozen = postgres_processes(database)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            client.send({"t": "text_input", "text": "two"})  # its store write never returns
            await deferLater(reactor, 0.5, lambda: None)
            took = await server.seconds_to_exit()
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        output = server.log.read_text()
        assert server.process.returncode == GAVE_UP, output
        assert "Shutdown did not finish within 11.0 s" in output and "services not stopped:" in output
        assert took < 1 + EXIT_MARGIN + 5  # the deadline, not the 60 s this test would wait
    finally:
        if server is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        database.stop()


def postgres_processes(database: PostgreSQL) -> list[int]:
    """The postmaster and its backends: frozen together, the server stops answering but keeps its sockets."""
    postmaster = int((database.dir / "data" / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    return [postmaster, *map(int, children)]
