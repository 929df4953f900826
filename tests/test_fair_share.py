"""Speech engines are shared fairly: one API key's flood cannot starve another user."""

from __future__ import annotations

import statistics
import threading
from typing import Any

import pytest_twisted
from twisted.internet.defer import CancelledError

from livetx.auth.keys import KeyStore
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


async def first_audio(client: LiveClient, text: str) -> float:
    """The server's own measure, from the turn's start to its first audio frame
    sent: the test's clients share the server's process, and 30 of them
    decoding audio would otherwise be measured too."""
    client.send({"t": "text_input", "text": text})
    frames = await client.until("end", timeout=60)
    return float(next(f["data"]["speak_to_first_frame"] for f in frames
                      if f["t"] == "metrics" and "speak_to_first_frame" in f["data"]))


@pytest_twisted.ensureDeferred
async def test_one_keys_flood_does_not_hold_up_another_users_first_audio(livetx: Any) -> None:
    server = await livetx("[server]\nmax_frames_per_second = 0\n")
    victim = await connect(server.url(LIVE, token=server.token("victim")))
    quiet = statistics.median([await first_audio(victim, "Hello there.") for _ in range(5)])
    sentence = "This is sentence number {} of a very long story that goes on and on."
    # One engine, one sentence at a time: a flood sentence already being spoken
    # is waited for, however fair the queue; the floor is a turn plus that wait.
    one_job = statistics.median([await first_audio(victim, sentence.format(i)) for i in range(3)])

    _, key = KeyStore(server.data_dir).create(["chat"], name="flood")
    story = " ".join(sentence.format(i) for i in range(40))
    flood = [await connect(server.url(OPEN_API, username=f"bot{i}"), {"X-API-Key": key}) for i in range(30)]
    for client in flood:
        client.send({"t": "text_input", "text": story})
    for client in flood:
        await client.until("response", timeout=60)  # every flooding turn is speaking
    loaded = statistics.median([await first_audio(victim, "Hello there.") for _ in range(7)])
    assert any("end" not in [f["t"] for f in c.frames] for c in flood)  # still flooding when measured
    assert loaded <= 3 * (quiet + one_job), (quiet, one_job, loaded)
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
