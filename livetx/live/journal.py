"""The frame journal behind resume (docs/protocol-extensions.md#resume).

A socket that opted into resume writes every frame it sends through a
:class:`Writer`, which numbers it (``seq``) and keeps it for a while. When the
socket drops during a turn, the turn goes on writing into the journal. A new
socket, here or on another process, sends ``resume`` first and gets a
:class:`Tail`: the frames it missed, in order, then the rest of the turn as it
is written, and a ``done`` Deferred that fires (with the last ``seq``) once
the old writer lets go; the new socket then writes on under the same id.

This module keeps journals in memory, for a single process; the same
interfaces over Redis Streams are :mod:`livetx.cluster.journal`. Nothing here
knows about sockets.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Callable, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from livetx.errors import ErrorCode
from livetx.live.frames import Frame, FrameError

Deliver = Callable[[Frame], None]

#: Seconds between sweeps of journals whose window is over.
SWEEP_EVERY = 10.0


def expired() -> FrameError:
    return FrameError(ErrorCode.RESUME_EXPIRED, "the frames to resume from are no longer kept; the stored history has the turn")


def not_yours() -> FrameError:
    return FrameError(ErrorCode.FORBIDDEN, "this session belongs to another user")


class Writer(Protocol):
    """The socket side: numbers and keeps each frame it sends."""

    session_id: str

    def append(self, frame: Frame) -> Frame:
        """The frame with its ``seq``, kept for resuming."""

    def detach(self, interrupt: Callable[[], None]) -> None:
        """The socket dropped mid-turn: ``interrupt`` is how a resumed socket stops the turn."""

    def release(self) -> None:
        """No more frames from this writer (the socket closed, or its detached turn ended)."""


class Tail(Protocol):
    """The resuming side: missed frames were delivered; the rest arrive until ``done``."""

    #: Fires with the last ``seq`` once the writer has let go (or died: then ``lost``).
    done: Deferred[int]
    #: The process running the turn died before the turn ended.
    lost: bool

    def interrupt(self) -> None:
        """Stop the turn, wherever it runs."""

    def cancel(self) -> None:
        """The resuming socket went away: deliver nothing more."""


class Journals(Protocol):
    def open(self, owner: str, session_id: str | None = None, after: int = 0) -> Writer:
        """A writer for a new journal, or (``session_id``) one taking over after ``after``."""

    def resume(self, session_id: str, owner: str, after: int, deliver: Deliver) -> Deferred[Tail]:
        """Deliver the frames after ``after``; fails with a :class:`FrameError` (expired, forbidden)."""


class _Log:
    def __init__(self, session_id: str, owner: str, limit: int) -> None:
        self.session_id = session_id
        self.owner = owner
        self.entries: deque[tuple[float, Frame]] = deque(maxlen=limit)
        self.seq = 0
        self.released = True
        self.last = 0.0
        self.tails: list[_MemoryTail] = []
        self.interrupt: Callable[[], None] | None = None


class _MemoryWriter:
    def __init__(self, log: _Log, clock: IReactorTime) -> None:
        self._log = log
        self._clock = clock
        self.session_id = log.session_id
        log.released = False

    def append(self, frame: Frame) -> Frame:
        log = self._log
        log.seq += 1
        numbered = {**frame, "seq": log.seq}
        log.last = self._clock.seconds()
        log.entries.append((log.last, numbered))
        for tail in list(log.tails):
            tail.deliver(numbered)
        return numbered

    def detach(self, interrupt: Callable[[], None]) -> None:
        self._log.interrupt = interrupt

    def release(self) -> None:
        log = self._log
        log.released, log.interrupt = True, None
        tails, log.tails = log.tails, []
        for tail in tails:
            tail.done.callback(log.seq)


class _MemoryTail:
    def __init__(self, log: _Log, deliver: Deliver) -> None:
        self._log = log
        self.deliver = deliver
        self.done: Deferred[int] = Deferred()
        self.lost = False  # in one process, the writer dies only with the reader

    def interrupt(self) -> None:
        if self._log.interrupt is not None:
            self._log.interrupt()

    def cancel(self) -> None:
        if self in self._log.tails:
            self._log.tails.remove(self)


def missed(entries: list[tuple[float, Frame]], last_seq: int, after: int, now: float,
           seconds: float) -> list[Frame]:
    """The frames after ``after``, or :func:`expired` when one of them is no longer kept.

    ``entries`` are (time, frame) oldest first; a frame counts as kept for
    ``seconds`` after it was written, and only the newest entries are kept.
    """
    wanted = [(at, frame) for at, frame in entries if frame["seq"] > after]
    first_kept = wanted[0][1]["seq"] if wanted else last_seq + 1
    if after < 0 or after > last_seq or first_kept != after + 1 or any(now - at > seconds for at, _ in wanted):
        raise expired()
    return [frame for _, frame in wanted]


class MemoryJournals:
    """Journals of one process (``[cluster] resume_seconds`` and ``resume_frames`` bound them)."""

    def __init__(self, clock: IReactorTime, seconds: float = 120.0, limit: int = 2000) -> None:
        self._clock = clock
        self._seconds = seconds
        self._limit = limit
        self._logs: dict[str, _Log] = {}
        self._swept = clock.seconds()

    def open(self, owner: str, session_id: str | None = None, after: int = 0) -> Writer:
        self._sweep()
        log = self._logs.get(session_id) if session_id else None
        if log is None:
            log = _Log(session_id or uuid.uuid4().hex, owner, self._limit)
            log.seq = after
            log.last = self._clock.seconds()
            self._logs[log.session_id] = log
        return _MemoryWriter(log, self._clock)

    def resume(self, session_id: str, owner: str, after: int, deliver: Deliver) -> Deferred[Tail]:
        self._sweep()
        log = self._logs.get(session_id)
        if log is None:
            return fail(expired())
        if log.owner != owner:
            return fail(not_yours())
        try:
            frames_missed = missed(list(log.entries), log.seq, after, self._clock.seconds(), self._seconds)
        except FrameError as e:
            return fail(e)
        tail = _MemoryTail(log, deliver)
        for frame in frames_missed:
            deliver(frame)
        if log.released:
            tail.done.callback(log.seq)
        else:
            log.tails.append(tail)
        result: Tail = tail
        return succeed(result)

    def _sweep(self) -> None:
        now = self._clock.seconds()
        if now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        for session_id in [s for s, log in self._logs.items() if log.released and now - log.last > self._seconds]:
            del self._logs[session_id]
