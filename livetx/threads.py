"""Bounded pools of threads or processes for engines whose calls block, shared fairly.

Each engine gets its own small pool, so a slow recognizer never queues
behind speech synthesis, and no engine can take more threads (or processes)
than it was given. A job cancelled before it starts never runs.

Jobs wait in one queue per *owner* (the API key, or the user, whose
connection asked for them) and the pool takes them round-robin: one key
flooding an engine with work delays another user's next job by at most one
job per busy owner, never by the whole flood. A connection gets an owned
view of a shared engine from :func:`owned`.

At shutdown a pool waits at most :data:`STOP_WAIT` for a job that already
runs: the reactor thread does that waiting, and a decode of a long segment
(tens of seconds on a busy core, and uninterruptible) kept the process alive
with its ports closed until the last resort ended it (issue 27.5). By then
the drain has stopped every turn, so nobody wants the job's result; the job
is left running on its daemon thread (or in its pool process, which exits
once the server is gone) and ends with the process.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from concurrent.futures import BrokenExecutor, Future
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

T = TypeVar("T")
E = TypeVar("E")

#: The engine methods an owned view passes its owner to.
_OWNED_CALLS = frozenset({"synthesize", "transcribe", "partial"})
#: Seconds a stopping pool waits for the jobs already running (the reactor thread waits with it).
STOP_WAIT = 1.0


class _Job:
    """One call waiting for, or running in, a pool."""

    __slots__ = ("call", "result", "cancelled", "future")

    def __init__(self, call: Callable[[], Any]) -> None:
        self.call = call
        self.cancelled = False
        #: Set once handed to a process pool: cancelling cancels it too (a no-op once it runs).
        self.future: Future[Any] | None = None
        self.result: Deferred[Any] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[Any]) -> None:
        self.cancelled = True
        if self.future is not None:
            self.future.cancel()

    def settle(self, outcome: Any) -> None:
        if not self.result.called:
            (self.result.errback if isinstance(outcome, Failure) else self.result.callback)(outcome)


class _FairPool:
    """Round-robin over owners' queues, at most ``size`` jobs running at once.

    Subclasses start a job (:meth:`_start`) and call :meth:`_done` on the
    reactor thread when it has finished, whatever its outcome."""

    def __init__(self, reactor: Any, size: int) -> None:
        self._reactor = reactor
        self._size = max(1, size)
        self._queues: OrderedDict[str, deque[_Job]] = OrderedDict()
        #: Jobs handed to the pool whose result has not come back yet.
        self._running = 0
        self._served: str | None = None

    def run(self, f: Callable[..., T], *args: Any, owner: str = "") -> Deferred[T]:
        """The call's result, once the pool gets to it; fails (never raises)."""
        job = _Job(functools.partial(f, *args))
        self._queues.setdefault(owner, deque()).append(job)
        self._pump()
        return job.result

    @property
    def idle(self) -> bool:
        """Whether a call now would start at once instead of waiting."""
        return self._running < self._size and not self._queues

    def _next(self) -> _Job | None:
        while self._queues:
            # The owner served last goes behind everyone waiting now, including
            # owners that arrived since: they must not wait for its next job too.
            if self._served is not None and self._served in self._queues:
                self._queues.move_to_end(self._served)
            owner, queue = next(iter(self._queues.items()))
            job = queue.popleft()
            if not queue:
                del self._queues[owner]
            self._served = owner
            if not job.cancelled:
                return job
        return None

    def _pump(self) -> None:
        while self._running < self._size:
            job = self._next()
            if job is None:
                return
            self._running += 1
            self._start(job)

    def _done(self) -> None:
        self._running -= 1
        self._pump()

    def _drop_waiting(self) -> None:
        """Shutting down: jobs that never started fail as cancelled."""
        queues, self._queues = self._queues, OrderedDict()
        for queue in queues.values():
            for job in queue:
                job.settle(Failure(CancelledError()))

    def _start(self, job: _Job) -> None:
        raise NotImplementedError


class Worker(_FairPool):
    """Runs blocking calls on at most ``size`` threads, started on first use."""

    def __init__(self, reactor: Any, name: str, size: int) -> None:
        super().__init__(reactor, size)
        self._pool = _DaemonThreadPool(minthreads=0, maxthreads=self._size, name=name)

    def _start(self, job: _Job) -> None:
        if not self._pool.started:
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self._stop)

        def call() -> Any:
            if job.cancelled:  # cancelled while it was handed over
                raise CancelledError()
            return job.call()

        def finished(outcome: Any) -> None:
            self._done()
            job.settle(outcome)

        deferToThreadPool(self._reactor, self._pool, call).addBoth(finished)

    def _stop(self) -> None:
        self._drop_waiting()
        stop_within(self._pool.stop, f"{self._pool.name}-stop", STOP_WAIT)


class _DaemonThread(threading.Thread):
    """A pool thread that never holds up the end of the process (a stop leaves a running job to it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class _DaemonThreadPool(ThreadPool):
    """Twisted's pool on daemon threads: a job a stop left running must not keep a finished process alive."""

    threadFactory = _DaemonThread


def stop_within(stop: Callable[[], None], name: str, seconds: float) -> None:
    """Call ``stop`` (which joins threads or processes) but wait for it at most ``seconds``.

    It runs on a daemon thread of its own: past the bound the caller (the
    reactor thread, shutting down) goes on, and the joining ends with the
    process.
    """
    stopping = threading.Thread(target=stop, name=name, daemon=True)
    stopping.start()
    stopping.join(seconds)


class ProcessWorker(_FairPool):
    """Runs picklable calls in at most ``size`` child processes, started on first use.

    For engines that keep Python's GIL while they compute (PocketSphinx): on a
    thread every call would stop the reactor, and with it every connection, for
    as long as it runs; a child process has a GIL of its own. Children come from
    a fork server, never a fork of the reactor's own (threaded) process. A
    cancelled job still waiting never runs; one already handed to a process
    finishes and its result is dropped. At shutdown the pool is joined, so its
    processes and their semaphores are released before the interpreter exits
    (twistd ends by re-raising SIGTERM: no ``atexit`` cleanup runs after the
    reactor).
    """

    def __init__(self, reactor: Any, size: int) -> None:
        super().__init__(reactor, size)
        self._pool: ProcessPoolExecutor | None = None

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Imported here: a server that never decodes never loads multiprocessing.
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self._size,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=_end_with,
                initargs=(os.getpid(),),
            )
            pool = weakref.ref(self._pool)  # an unused worker's children end with it
            this = weakref.ref(self)

            def stop() -> None:
                worker, alive = this(), pool()
                if worker is not None:
                    worker._drop_waiting()
                    worker._pool = None
                if alive is not None:
                    # Waits (up to STOP_WAIT) for a decode already running. One
                    # call with ``wait=True``: a first call without it forgets
                    # the queues, and a second then has nothing to close; that
                    # left their semaphores to the resource tracker, which
                    # warned about each.
                    stop_within(functools.partial(alive.shutdown, wait=True, cancel_futures=True),
                                "pool-processes-stop", STOP_WAIT)

            self._reactor.addSystemEventTrigger("during", "shutdown", stop)
        return self._pool

    def _start(self, job: _Job) -> None:
        try:
            future = self._submit(job.call)
        except (RuntimeError, BrokenExecutor):  # shut down, or broken again at once
            self._running -= 1
            job.settle(Failure())
            return
        job.future = future

        def settle(done: Future[Any]) -> None:
            self._done()
            if done.cancelled():  # by shutdown(cancel_futures=True): no result will come
                job.settle(Failure(CancelledError()))
                return
            error = done.exception()
            job.settle(done.result() if error is None else Failure(error))

        future.add_done_callback(lambda done: self._reactor.callFromThread(settle, done))

    def _submit(self, call: Callable[[], T]) -> Future[T]:
        try:
            return self._started().submit(call)
        except BrokenExecutor:  # a process died (a crash in C, say): start a new pool
            self._pool = None
            return self._started().submit(call)


def owned(engine: E, owner: str) -> E:
    """A view of a shared engine whose jobs queue under ``owner``.

    Engines that take turns fairly say so with ``fair_share = True`` and take
    an ``owner`` keyword in their calls; any other engine (a hosted service,
    which queues on its own side) is returned as it is."""
    if engine is None or not getattr(engine, "fair_share", False):
        return engine
    return _Owned(engine, owner)  # type: ignore[return-value]


class _Owned:
    """Everything of the engine, with ``owner`` passed to its calls."""

    def __init__(self, engine: Any, owner: str) -> None:
        self._engine = engine
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._engine, name)
        if name in _OWNED_CALLS:
            return functools.partial(value, owner=self._owner)
        return value


def _end_with(parent: int) -> None:
    """In a pool process: exit once ``parent`` is gone. A server killed outright
    never stops its pool, and an idle pool process would wait for work forever."""

    def watch() -> None:
        while True:
            time.sleep(1)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
