"""Bounded thread pools for engines whose calls block (eSpeak, PocketSphinx).

Each engine gets its own small pool, so a slow recognizer never queues
behind speech synthesis, and no engine can take more threads than it was
given. A job cancelled before it starts never runs.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

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
        cancelled: list[bool] = []

        def job() -> T:
            if cancelled:
                raise CancelledError()
            return f(*args)

        result: Deferred[T] = Deferred(lambda _: cancelled.append(True))

        def settle(outcome: Any) -> None:
            if not result.called:
                (result.errback if isinstance(outcome, Failure) else result.callback)(outcome)

        deferToThreadPool(self._reactor, self._pool, job).addBoth(settle)
        return result
