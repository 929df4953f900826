"""The resume journal across processes: one Redis Stream per session.

The same interfaces as :mod:`livetx.live.journal`, which keeps journals in
memory. A writer appends each numbered frame with one script: ``XADD`` with
the frame's ``seq`` as the entry id, the keys' expiry pushed to
``resume_seconds`` from now, the oldest entries deleted past the session's
frame and byte budget and then past its quota's (a sorted set per quota
names its frames in the order written, with their sizes), and a ``PUBLISH`` of the
frame for sockets following the turn live. A resuming
socket subscribes first, then reads the session's owner and the missed frames
(``XRANGE``) in one script; frames published meanwhile are held back and
passed on only past the last one read, so nothing arrives twice or out of
order. Interrupts travel the other way on a channel of their own, heard by
the process whose socket dropped while its turn runs.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from livetx.cluster.redis import Redis, warn_unreachable
from livetx.live.frames import Frame, FrameError
from livetx.live.journal import Budget, Deliver, Tail, Writer, expired, kept, missed, not_yours

_OPEN = """
redis.call('HSET', KEYS[1], 'released', '0', 'node', ARGV[3])
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'owner', ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0
"""

#: KEYS: stream, meta, frames channel, the quota's frames (a sorted set, in the order written), the quota's
#: counts (a hash: bytes, and frames ever written). ARGV: seq, frame kept, frames per session, time, ttl,
#: session bytes, quota bytes, session id, key prefix, and the frame itself when only its marker is kept.
_APPEND = """
local size = string.len(ARGV[2])
local function drop(member)
  local session, seq, bytes = string.match(member, '^(%S+) (%d+) (%d+) ')
  local base = ARGV[9] .. 'journal:' .. session
  redis.call('ZREM', KEYS[4], member)
  redis.call('HINCRBY', KEYS[5], 'bytes', -tonumber(bytes))
  if redis.call('XDEL', base, seq .. '-0') == 1 then
    redis.call('HINCRBY', base .. ':meta', 'bytes', -tonumber(bytes))
  end
end
local function member(seq, bytes, at)
  return ARGV[8] .. ' ' .. seq .. ' ' .. bytes .. ' ' .. at
end
redis.call('XADD', KEYS[1], ARGV[1] .. '-0', 'at', ARGV[4], 'n', size, 'f', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'bytes', size)
redis.call('ZADD', KEYS[4], redis.call('HINCRBY', KEYS[5], 'n', 1), member(ARGV[1], size, ARGV[4]))
redis.call('HINCRBY', KEYS[5], 'bytes', size)
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[4], KEYS[5]}) do redis.call('EXPIRE', key, ARGV[5]) end
local stale = tonumber(ARGV[4]) - tonumber(ARGV[5])
while true do
  local oldest = redis.call('ZRANGE', KEYS[4], 0, 0)[1]
  if not oldest or tonumber(string.match(oldest, ' (%S+)$')) >= stale then break end
  drop(oldest)
end
while redis.call('XLEN', KEYS[1]) > tonumber(ARGV[3])
    or tonumber(redis.call('HGET', KEYS[2], 'bytes')) > tonumber(ARGV[6]) do
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  local fields = oldest[2]
  drop(member(string.match(oldest[1], '^(%d+)'), fields[4], fields[2]))
end
while tonumber(redis.call('HGET', KEYS[5], 'bytes')) > tonumber(ARGV[7]) do
  drop(redis.call('ZRANGE', KEYS[4], 0, 0)[1])
end
redis.call('PUBLISH', KEYS[3], 'f' .. (ARGV[10] ~= '' and ARGV[10] or ARGV[2]))
return 0
"""

#: A journal nobody will resume: its frames leave the quota's count and its keys go.
_DISCARD = """
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local fields = entry[2]
  local member = ARGV[1] .. ' ' .. string.match(entry[1], '^(%d+)') .. ' ' .. fields[4] .. ' ' .. fields[2]
  if redis.call('ZREM', KEYS[3], member) == 1 then redis.call('HINCRBY', KEYS[4], 'bytes', -tonumber(fields[4])) end
end
redis.call('DEL', KEYS[1], KEYS[2])
return 0
"""

_RELEASE = """
redis.call('HSET', KEYS[1], 'released', '1', 'last', ARGV[1])
redis.call('PUBLISH', KEYS[2], 'r' .. ARGV[1])
return 0
"""

_READ = """
local meta = redis.call('HGETALL', KEYS[2])
if #meta == 0 then return false end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
return {meta, last, redis.call('XRANGE', KEYS[1], ARGV[1] .. '-0', '+')}
"""

#: A writer's process is alive while its heartbeat key is (``livetx.cluster.limits``).
_WRITER_ALIVE = """
local node = redis.call('HGET', KEYS[1], 'node')
if not node or redis.call('HGET', KEYS[1], 'released') == '1' then return 1 end
return redis.call('EXISTS', ARGV[1] .. node)
"""

#: Seconds between looks at whether a followed turn's process still runs.
WATCH_EVERY = 1.0


class _Keys:
    def __init__(self, prefix: str, session_id: str, quota: str = "") -> None:
        base = f"{prefix}journal:{session_id}"
        self.stream, self.meta, self.frames, self.interrupts = base, base + ":meta", base + ":frames", base + ":interrupt"
        self.quota_frames = f"{prefix}journal-quota:{quota}"
        self.quota_counts = self.quota_frames + ":counts"


def _seq(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def _entry(entry: list[Any]) -> tuple[float, Frame]:
    fields = entry[1]
    values = dict(zip(fields[::2], fields[1::2]))
    return float(values["at"]), json.loads(values["f"])


class RedisWriter:
    def __init__(self, journals: RedisJournals, session_id: str, owner: str, after: int, quota: str) -> None:
        self._j = journals
        self.session_id = session_id
        self._keys = _Keys(journals.prefix, session_id, quota)
        self._seq = after
        self._interrupt: Callable[[str], None] | None = None
        self._j.run(_OPEN, [self._keys.meta], [owner if after == 0 else "", journals.ttl, journals.node])

    def append(self, frame: Frame) -> Frame:
        self._seq += 1
        numbered = {**frame, "seq": self._seq}
        j, keys = self._j, self._keys
        frame, encoded = kept(numbered, j.budget)
        whole = "" if frame is numbered else json.dumps(numbered, separators=(",", ":"))  # for live followers
        j.run(_APPEND, [keys.stream, keys.meta, keys.frames, keys.quota_frames, keys.quota_counts],
              [self._seq, encoded, j.budget.frames, f"{j.clock.seconds():.3f}", j.ttl, j.budget.session_bytes,
               j.budget.quota_bytes, self.session_id, j.prefix, whole])
        return numbered

    def detach(self, interrupt: Callable[[], None]) -> None:
        self._interrupt = lambda _: interrupt()
        self._j.redis.listen(self._keys.interrupts, self._interrupt)

    def release(self) -> None:
        if self._interrupt is not None:
            self._j.redis.unsubscribe(self._keys.interrupts, self._interrupt)
            self._interrupt = None
        self._j.run(_RELEASE, [self._keys.meta, self._keys.frames], [self._seq])


    def discard(self) -> None:
        self.release()
        keys = self._keys
        self._j.run(_DISCARD, [keys.stream, keys.meta, keys.quota_frames, keys.quota_counts], [self.session_id])


class RedisTail:
    def __init__(self, journals: RedisJournals, session_id: str, after: int, deliver: Deliver) -> None:
        self._j = journals
        self._keys = _Keys(journals.prefix, session_id)
        self._deliver = deliver
        self._last = after
        self._held: list[str] | None = []  # published while the missed frames are read
        self.done: Deferred[int] = Deferred()
        #: The process running the turn died: the turn will never end.
        self.lost = False
        self._watch = LoopingCall(self._look)
        self._watch.clock = journals.clock

    def _look(self) -> None:
        """Whether the writer's process still runs; a killed one never lets go, so end the tail."""
        d = self._j.redis.script(_WRITER_ALIVE, [self._keys.meta], [self._j.prefix + "node:"])

        def answered(alive: Any) -> None:
            if not int(alive) and not self.done.called:
                self.lost = True
                self._finish(self._last)

        d.addCallbacks(answered, warn_unreachable, errbackArgs=("look after a resumed turn",))

    def heard(self, message: str) -> None:
        if self._held is not None:
            self._held.append(message)
            return
        kind, body = message[0], message[1:]
        if kind == "r":
            self._finish(int(body))
            return
        frame = json.loads(body)
        if frame["seq"] > self._last:
            self._last = frame["seq"]
            self._deliver(frame)

    def caught_up(self, released: int | None) -> None:
        """The missed frames are delivered; pass on what was held back, then go live."""
        held, self._held = self._held or [], None
        for message in held:
            self.heard(message)
        if released is not None:
            self._finish(released)
        elif not self.done.called:
            self._watch.start(WATCH_EVERY, now=True)

    def delivered(self, frame: Frame) -> None:
        self._last = frame["seq"]
        self._deliver(frame)

    def _finish(self, last: int) -> None:
        self.cancel()
        if not self.done.called:
            self.done.callback(max(last, self._last))

    def interrupt(self) -> None:
        self._j.redis.publish(self._keys.interrupts, "interrupt").addErrback(warn_unreachable, "route an interrupt")

    def cancel(self) -> None:
        if self._watch.running:
            self._watch.stop()
        self._j.redis.unsubscribe(self._keys.frames, self.heard)


class RedisJournals:
    """Journals shared by every process through Redis."""

    def __init__(self, redis: Redis, clock: IReactorTime, node: str, seconds: float = 120.0, limit: int = 2000,
                 prefix: str = "livetx:", budget: Budget | None = None) -> None:
        self.node = node
        self.redis = redis
        self.clock = clock
        self.seconds = seconds
        self.ttl = max(1, int(seconds + 0.999))
        self.budget = budget or Budget(frames=limit)
        self.prefix = prefix

    def run(self, script: str, keys: list[str], args: list[Any]) -> None:
        """A write nobody waits for; the one command connection keeps writes in order."""
        self.redis.script(script, keys, args).addErrback(warn_unreachable, "write the resume journal")

    def open(self, owner: str, session_id: str | None = None, after: int = 0, quota: str | None = None) -> Writer:
        return RedisWriter(self, session_id or uuid.uuid4().hex, owner, after, quota or owner)

    def resume(self, session_id: str, owner: str, after: int, deliver: Deliver) -> Deferred[Tail]:
        tail = RedisTail(self, session_id, after, deliver)
        keys = _Keys(self.prefix, session_id)
        d = self.redis.subscribe(keys.frames, tail.heard)
        d.addCallback(lambda _: self.redis.script(_READ, [keys.stream, keys.meta], [after + 1]))
        d.addCallback(self._read, tail, owner, after)

        def refused(failure: Failure) -> Failure:
            tail.cancel()
            if not failure.check(FrameError):
                warn_unreachable(failure, "read the resume journal")
                return Failure(expired())
            return failure

        return d.addErrback(refused)

    def _read(self, reply: Any, tail: RedisTail, owner: str, after: int) -> Tail:
        if not reply:
            raise expired()
        flat, last, entries = reply
        meta = dict(zip(flat[::2], flat[1::2]))
        if meta.get("owner") != owner:
            raise not_yours()
        last_seq = _seq(last[0][0]) if last else 0
        for frame in missed([_entry(e) for e in entries], last_seq, after, self.clock.seconds(), self.seconds):
            tail.delivered(frame)
        tail.caught_up(int(meta.get("last", last_seq)) if meta.get("released") == "1" else None)
        return tail

