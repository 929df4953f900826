"""Speech engines are shared fairly: one API key's flood cannot starve another user."""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError

from livetx.auth.keys import KeyStore
from livetx.providers import espeak
from livetx.threads import STOP_WAIT, Worker, _FairPool, _Job, owned

from .support import LiveClient, connect
from .test_live_ws import LIVE, OPEN_API
from .test_sphinx_process import ThreadedMemoryReactor


class Recording(_FairPool):
    """A pool whose jobs start when the test says they do."""

    def __init__(self, size: int = 1) -> None:
        super().__init__(None, size)
        self.started: list[_Job] = []

    def _start(self, job: _Job) -> None:
        self.started.append(job)

    def finish(self) -> None:
        job = self.started[-1]
        self._done()
        job.settle(job.call())


def test_owners_take_turns_however_much_one_of_them_queues() -> None:
    pool = Recording()
    flood = [pool.run(str, f"k{i}", owner="key") for i in range(5)]
    other = pool.run(str, "alice", owner="alice")
    late = pool.run(str, "bob", owner="bob")
    order = []
    for d in (*flood, other, late):
        d.addCallback(order.append)
    while pool.started and len(order) < 7:
        pool.finish()
    assert order == ["k0", "alice", "bob", "k1", "k2", "k3", "k4"]
    assert pool.idle


def test_a_job_cancelled_while_waiting_never_starts() -> None:
    pool = Recording()
    pool.run(str, "running", owner="a")
    waiting = pool.run(str, "waiting", owner="a")
    waiting.addErrback(lambda f: f.trap(CancelledError))
    waiting.cancel()
    pool.finish()
    assert [job.call() for job in pool.started] == ["running"]


def test_owned_views_pass_their_owner_and_leave_other_engines_alone() -> None:
    class Engine:
        fair_share = True
        name = "e"

        def synthesize(self, text: str, owner: str = "") -> str:
            return f"{owner}:{text}"

    hosted = object()
    assert owned(hosted, "k") is hosted and owned(None, "k") is None
    view = owned(Engine(), "key-1")
    assert view.name == "e" and view.synthesize("hi") == "key-1:hi"


class Ledger:
    """What the shared eSpeak pool queued and started, owner by owner, in the reactor's order.

    A wait counted in the jobs that ran first is the mechanism itself, and no machine's speed
    changes it; a wait in seconds did (it failed on a loaded machine with the queue as fair)."""

    def __init__(self, pool: _FairPool, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []  # ("queued" | "started", owner)
        run, take = pool.run, pool._next

        def queued(f: Callable[..., Any], *args: Any, owner: str = "") -> Any:
            self.events.append(("queued", owner))
            return run(f, *args, owner=owner)

        def started() -> _Job | None:
            job = take()
            if job is not None:
                self.events.append(("started", pool._served or ""))
            return job

        monkeypatch.setattr(pool, "run", queued)
        monkeypatch.setattr(pool, "_next", started)

    def waits(self, owner: str) -> list[tuple[int, int]]:
        """For each of ``owner``'s jobs, in order: the other owners' jobs waiting when it was
        queued, and how many of those started before it did."""
        waiting: collections.Counter[str] = collections.Counter()
        open_: list[list[int]] = []
        found: list[tuple[int, int]] = []
        for kind, who in self.events:
            waiting[who] += 1 if kind == "queued" else -1
            if who == owner and kind == "queued":
                open_.append([sum(n for o, n in waiting.items() if o != owner), 0])
            elif who == owner and open_:
                found.append((open_[0][0], open_.pop(0)[1]))
            elif kind == "started":
                for wait in open_:
                    wait[1] += 1
        return found


async def turn(client: LiveClient, text: str) -> list[dict[str, Any]]:
    client.send({"t": "text_input", "text": text})
    return await client.until("end", timeout=60)


@pytest_twisted.ensureDeferred
async def test_one_keys_flood_does_not_hold_up_another_users_first_audio(
        livetx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await livetx("[server]\nmax_frames_per_second = 0\n")
    victim = await connect(server.url(LIVE, token=server.token("victim")))
    assert espeak._worker is not None  # every connection's eSpeak shares this one-thread pool
    ledger = Ledger(espeak._worker, monkeypatch)
    await turn(victim, "Hello there.")
    (_, owner), = {e for e in ledger.events if e[0] == "queued"}  # the victim's own queue

    _, key = KeyStore(server.data_dir).create(["chat"], name="flood")
    sentence = "This is sentence number {} of a very long story that goes on and on."
    story = " ".join(sentence.format(i) for i in range(40))
    flood = [await connect(server.url(OPEN_API, username=f"bot{i}"), {"X-API-Key": key}) for i in range(30)]
    for client in flood:
        client.send({"t": "text_input", "text": story})
    for client in flood:
        await client.until("response", timeout=60)  # every flooding turn is speaking
    for _ in range(3):
        assert "response" in [f["t"] for f in await turn(victim, "Hello there.")]
    waits = ledger.waits(owner)[-3:]
    # The flood's jobs were queued ahead of each of the victim's sentences (a queue in arrival
    # order would speak them all first), yet none of them started before it: the victim waited
    # only for the one sentence already being spoken.
    assert len(waits) == 3 and all(ahead >= len(flood) and ran == 0 for ahead, ran in waits), waits
    assert any("end" not in [f["t"] for f in c.frames] for c in flood)  # still flooding when measured
    for client in [victim, *flood]:
        client.dropConnection(abort=True)


def test_a_stopping_pool_leaves_a_job_that_runs_on() -> None:
    """At shutdown the reactor thread stops each engine's pool: a job that runs on (a long decode,
    which nothing can interrupt) held it, and the process, until the job ended (issue 27.5)."""
    fake = ThreadedMemoryReactor()
    worker = Worker(fake, "held", 1)
    started, release = threading.Event(), threading.Event()

    def job() -> None:
        started.set()
        release.wait(STOP_WAIT * 20)

    worker.run(job)
    assert started.wait(10)
    (stop, _, _), = fake.triggers["during"]["shutdown"]
    try:
        stop()  # what the reactor's shutdown calls
        running = [t for t in threading.enumerate() if t.name.startswith("held")]
        assert not release.is_set() and running  # it came back while the job still ran
        assert all(t.daemon for t in running)  # and the job's thread does not keep the process alive
    finally:
        release.set()
