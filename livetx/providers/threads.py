"""Bounded pools of threads or processes for engines whose calls block.

Each engine gets its own small pool, so a slow recognizer never queues
behind speech synthesis, and no engine can take more threads (or processes)
than it was given. A job cancelled before it starts never runs.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from concurrent.futures import BrokenExecutor, Future
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

T = TypeVar("T")


class Worker:
    """Runs blocking calls on at most ``size`` threads, started on first use."""

    def __init__(self, reactor: Any, name: str, size: int) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=max(1, size), name=name)

    def _ensure_started(self) -> None:
        if not self._pool.started:
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)

    def run(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        self._ensure_started()
        cancelled = False

        def job() -> T:
            if cancelled:
                raise CancelledError()
            return f(*args)

        def cancel(_: Deferred[T]) -> None:
            nonlocal cancelled
            cancelled = True

        result: Deferred[T] = Deferred(cancel)

        def settle(outcome: Any) -> None:
            if not result.called:
                (result.errback if isinstance(outcome, Failure) else result.callback)(outcome)

        deferToThreadPool(self._reactor, self._pool, job).addBoth(settle)
        return result


class ProcessWorker:
    """Runs picklable calls in at most ``size`` child processes, started on first use.

    For engines that keep Python's GIL while they compute (PocketSphinx): on a
    thread every call would stop the reactor, and with it every connection, for
    as long as it runs; a child process has a GIL of its own. Children come from
    a fork server, never a fork of the reactor's own (threaded) process. A
    cancelled job still waiting in the pool never runs; one already handed to a
    process (running, or next in line) finishes and its result is dropped.
    """

    def __init__(self, reactor: Any, size: int) -> None:
        self._reactor = reactor
        self._size = max(1, size)
        self._pool: ProcessPoolExecutor | None = None
        #: Calls handed to the pool whose result has not come back yet.
        self._running = 0

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

            def stop() -> None:
                alive = pool()
                if alive is not None:
                    alive.shutdown(wait=False, cancel_futures=True)

            self._reactor.addSystemEventTrigger("during", "shutdown", stop)
        return self._pool

    def run(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        """The call's result; fails (never raises) when the pool cannot take it."""
        try:
            future = self._submit(f, *args)
        except (RuntimeError, BrokenExecutor):  # shut down, or broken again at once
            return fail()
        self._running += 1
        def cancel(_: Deferred[T]) -> None:
            future.cancel()

        result: Deferred[T] = Deferred(cancel)

        def settle(done: Future[T]) -> None:
            self._running -= 1
            if result.called:
                return
            if done.cancelled():  # by shutdown(cancel_futures=True): no result will come
                result.errback(CancelledError())
                return
            error = done.exception()
            if error is None:
                result.callback(done.result())
            else:
                result.errback(Failure(error))

        future.add_done_callback(lambda done: self._reactor.callFromThread(settle, done))
        return result

    def _submit(self, f: Callable[..., T], *args: Any) -> Future[T]:
        try:
            return self._started().submit(f, *args)
        except BrokenExecutor:  # a process died (a crash in C, say): start a new pool
            self._pool = None
            return self._started().submit(f, *args)

    @property
    def idle(self) -> bool:
        """Whether a call now would start at once instead of waiting for a process."""
        return self._running < self._size


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
