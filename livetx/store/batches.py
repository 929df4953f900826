"""Group commit, the same for every backend.

Whatever was asked for while the previous transaction ran goes into the next
one, each unit in its own savepoint (one failing unit rolls back alone), and
every Deferred of the batch fires after its single commit. Twenty turns
ending at once then cost one flush to disk instead of forty, and a socket's
history query no longer queues behind them. One batch runs at a time, so
work is applied in the order it was asked for.

A backend gives :class:`GroupCommit` one function: run this batch as one
transaction somewhere off the reactor thread, and return a Deferred of each
unit's outcome (:func:`apply_units` does the part inside the transaction).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

from livetx.errors import StoreUnavailable

_T = TypeVar("_T")
Unit = tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]
Outcome = tuple[bool, Any]

#: Units in one transaction at most: a unit's Deferred waits for its batch's commit.
MAX_BATCH = 100


def apply_units(cursor: Any, batch: list[Unit]) -> list[Outcome]:
    """Run each unit as ``work(cursor, *args)`` in its own savepoint of the open transaction."""
    outcomes: list[Outcome] = []
    for work, args, _ in batch:
        cursor.execute("SAVEPOINT unit")
        try:
            outcomes.append((True, work(cursor, *args)))
        except Exception:
            cursor.execute("ROLLBACK TO SAVEPOINT unit")
            failure = Failure()
            failure.cleanFailure()
            outcomes.append((False, failure))
        cursor.execute("RELEASE SAVEPOINT unit")
    return outcomes


class GroupCommit:
    """The queue of units, and one batch in flight at a time."""

    def __init__(self, run: Callable[[list[Unit]], Deferred[list[Outcome]]]) -> None:
        #: Runs a batch as one transaction; replaceable, so tests can count transactions.
        self.run = run
        self._queue: list[Unit] = []
        self._running = False
        self._idle: list[Deferred[None]] = []

    def unit(self, work: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Queue ``work(cursor, *args)``; it runs in the next transaction."""
        done: Deferred[_T] = Deferred()
        self._queue.append((work, args, done))
        if not self._running:
            self._next_batch()
        return done

    def idle(self) -> Deferred[None]:
        """Fires once everything queued so far has committed (or failed)."""
        if not self._running:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._idle.append(waiting)
        return waiting

    def _next_batch(self) -> None:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        self._running = True
        # maybeDeferred: a backend that cannot even start fails this batch, not the queue for good
        maybeDeferred(self.run, batch).addBoth(self._settle, batch)

    def _settle(self, outcomes: list[Outcome] | Failure, batch: list[Unit]) -> None:
        if isinstance(outcomes, Failure):  # the commit itself failed: so did every unit
            if outcomes.check(StoreUnavailable):
                # What queued meanwhile would wait as long again for the same absent database:
                # it fails now, so a turn learns within one wait, not one per batch ahead of it.
                batch, self._queue = batch + self._queue, []
            outcomes = [(False, outcomes)] * len(batch)
        if self._queue:
            self._next_batch()  # before the callbacks, which may queue more
        else:
            self._running = False
        for (ok, value), (_, _, done) in zip(outcomes, batch):
            if ok:
                done.callback(value)
            else:
                done.errback(value)
        if not self._running:
            idle, self._idle = self._idle, []
            for waiting in idle:
                waiting.callback(None)
