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

What is kept is bounded by a :class:`Budget` in frames and in bytes, per
session and per quota (the API key, or the user of a token), so that a
flood of large turns costs a bounded amount of memory, here or in Redis: the
oldest frames go first, and a frame larger than ``frame_bytes`` (a 4 MiB
``user_msg`` echo) is kept as a small ``omitted`` marker; the stored history
has its text.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from livetx.config import ClusterConfig
from livetx.errors import ErrorCode
from livetx.live.frames import Frame, FrameError

Deliver = Callable[[Frame], None]

#: Seconds between sweeps of journals whose window is over.
SWEEP_EVERY = 10.0


def expired() -> FrameError:
    return FrameError(ErrorCode.RESUME_EXPIRED, "the frames to resume from are no longer kept; the stored history has the turn")


def not_yours() -> FrameError:
    return FrameError(ErrorCode.FORBIDDEN, "this session belongs to another user")


@dataclass(frozen=True)
class Budget:
    """What journals may keep (``[cluster] resume_*``); the oldest frames go first past any of it."""

    #: Frames per session.
    frames: int = 2000
    #: Bytes (of the frames as JSON) per session.
    session_bytes: int = 8 * 1024 * 1024
    #: Bytes over all the sessions of one quota: an API key, or a token's user.
    quota_bytes: int = 32 * 1024 * 1024
    #: A larger frame is kept as a marker (an ``omitted`` frame naming its kind and size).
    frame_bytes: int = 1024 * 1024

    @classmethod
    def of(cls, cluster: ClusterConfig) -> Budget:
        return cls(cluster.resume_frames, cluster.resume_session_bytes, cluster.resume_quota_bytes,
                   cluster.resume_frame_bytes)


def kept(frame: Frame, budget: Budget) -> tuple[Frame, str]:
    """What a journal keeps of a numbered frame, and that as JSON (its size is what counts).

    A frame past ``frame_bytes`` is kept as ``{"t": "omitted", "seq", "frame", "bytes"}``
    (``type`` instead of ``t`` for chat frames), so a resumed client knows
    the number was used and what it carried.
    """
    encoded = json.dumps(frame, separators=(",", ":"))
    if len(encoded) <= budget.frame_bytes:
        return frame, encoded
    key = "t" if "t" in frame else "type"
    marker = {key: "omitted", "seq": frame["seq"], "frame": frame.get(key), "bytes": len(encoded)}
    return marker, json.dumps(marker, separators=(",", ":"))


class Writer(Protocol):
    """The socket side: numbers and keeps each frame it sends."""

    session_id: str

    def append(self, frame: Frame) -> Frame:
        """The frame with its ``seq``, kept for resuming."""

    def detach(self, interrupt: Callable[[], None]) -> None:
        """The socket dropped mid-turn: ``interrupt`` is how a resumed socket stops the turn."""

    def release(self) -> None:
        """No more frames from this writer (the socket closed, or its detached turn ended)."""

    def discard(self) -> None:
        """No more frames, and forget those written: the socket resumed another session instead."""


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
    def open(self, owner: str, session_id: str | None = None, after: int = 0, quota: str | None = None) -> Writer:
        """A writer for a new journal, or (``session_id``) one taking over after ``after``.

        ``quota`` (the owner if not given) is whose byte budget the frames count against.
        """

    def resume(self, session_id: str, owner: str, after: int, deliver: Deliver) -> Deferred[Tail]:
        """Deliver the frames after ``after``; fails with a :class:`FrameError` (expired, forbidden)."""


class _Log:
    def __init__(self, session_id: str, owner: str, quota: str) -> None:
        self.session_id = session_id
        self.owner = owner
        self.quota = quota
        #: (time written, frame kept, its size), oldest first.
        self.entries: deque[tuple[float, Frame, int]] = deque()
        self.bytes = 0
        self.seq = 0
        self.released = True
        self.last = 0.0
        self.tails: list[_MemoryTail] = []
        self.interrupt: Callable[[], None] | None = None


class _MemoryWriter:
    def __init__(self, log: _Log, journals: MemoryJournals) -> None:
        self._log = log
        self._journals = journals
        self.session_id = log.session_id
        log.released = False

    def append(self, frame: Frame) -> Frame:
        log = self._log
        log.seq += 1
        numbered = {**frame, "seq": log.seq}
        log.last = self._journals.clock.seconds()
        self._journals.keep(log, numbered)
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

    def discard(self) -> None:
        self.release()
        self._journals.forget(self._log)


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
    """Journals of one process (``[cluster] resume_seconds`` and the :class:`Budget` bound them)."""

    def __init__(self, clock: IReactorTime, seconds: float = 120.0, limit: int = 2000,
                 budget: Budget | None = None) -> None:
        self.clock = clock
        self._seconds = seconds
        self._budget = budget or Budget(frames=limit)
        self._logs: dict[str, _Log] = {}
        #: The logs holding frames, per quota, and the bytes they hold.
        self._quotas: dict[str, dict[str, _Log]] = {}
        self._quota_bytes: dict[str, int] = {}
        self._swept = clock.seconds()

    def open(self, owner: str, session_id: str | None = None, after: int = 0, quota: str | None = None) -> Writer:
        self._sweep()
        log = self._logs.get(session_id) if session_id else None
        if log is None:
            log = _Log(session_id or uuid.uuid4().hex, owner, quota or owner)
            log.seq = after
            log.last = self.clock.seconds()
            self._logs[log.session_id] = log
        return _MemoryWriter(log, self)

    def keep(self, log: _Log, numbered: Frame) -> None:
        """Keep a frame (or its marker), then drop the oldest past the session's and the quota's budget."""
        budget = self._budget
        frame, encoded = kept(numbered, budget)
        log.entries.append((log.last, frame, len(encoded)))
        log.bytes += len(encoded)
        self._quotas.setdefault(log.quota, {})[log.session_id] = log
        self._quota_bytes[log.quota] = self._quota_bytes.get(log.quota, 0) + len(encoded)
        while len(log.entries) > budget.frames or log.bytes > budget.session_bytes:
            self._drop_oldest(log)
        while self._quota_bytes.get(log.quota, 0) > budget.quota_bytes:
            self._drop_oldest(min(self._quotas[log.quota].values(), key=lambda held: held.entries[0][0]))

    def forget(self, log: _Log) -> None:
        """A journal nobody will resume: its frames go now, not at the end of its window."""
        self._logs.pop(log.session_id, None)
        while log.entries:
            self._drop_oldest(log)

    def _drop_oldest(self, log: _Log) -> None:
        _, _, size = log.entries.popleft()
        log.bytes -= size
        self._quota_bytes[log.quota] -= size
        if not log.entries:
            self._forget(log)

    def _forget(self, log: _Log) -> None:
        """``log`` holds no frames (or is gone): it no longer counts against its quota."""
        logs = self._quotas.get(log.quota, {})
        logs.pop(log.session_id, None)
        if not logs:
            self._quotas.pop(log.quota, None)
            self._quota_bytes.pop(log.quota, None)

    def resume(self, session_id: str, owner: str, after: int, deliver: Deliver) -> Deferred[Tail]:
        self._sweep()
        log = self._logs.get(session_id)
        if log is None:
            return fail(expired())
        if log.owner != owner:
            return fail(not_yours())
        try:
            frames_missed = missed([(at, frame) for at, frame, _ in log.entries], log.seq, after,
                                   self.clock.seconds(), self._seconds)
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
        now = self.clock.seconds()
        if now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        for log in [log for log in self._logs.values() if log.released and now - log.last > self._seconds]:
            self.forget(log)
