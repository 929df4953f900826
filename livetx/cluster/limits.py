"""Limits that hold across processes: connection slots per user and per key, failed logins.

Connection slots live in one Redis hash per user (and per API key), a field
per node holding that node's count, changed by Lua scripts so that checking
and taking a slot is one atomic step. A node that dies without giving its
slots back stops refreshing its heartbeat key; the next script to read the
hash drops that node's field, so a killed node locks no one out for longer
than :data:`HEARTBEAT_TTL`.

Failed authentications count per client address in a key that expires a
minute after the first failure (a fixed window: cheaper than the in-process
sliding one, and as good at slowing guessing). The node that counts the
failure over the limit tells every node, which then refuse that address
without a round trip.

When Redis does not answer, each process falls back on its own limits (the
in-process ones always apply too) and logs it: a Redis outage must not shut
every user out.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from livetx.cluster.redis import Redis, warn_unreachable
from livetx.web.admission import FailedAuth

#: Seconds a node's heartbeat key lives; it is refreshed every third of that. A killed
#: node's slots are freed, and a turn it ran is given up on by a resumed socket, after this.
HEARTBEAT_TTL = 6

_ACQUIRE = """
local node, alive = ARGV[1], ARGV[2]
local function total(hash)
  local sum = 0
  local fields = redis.call('HGETALL', hash)
  for i = 1, #fields, 2 do
    if fields[i] == node or redis.call('EXISTS', alive .. fields[i]) == 1 then
      sum = sum + tonumber(fields[i + 1])
    else
      redis.call('HDEL', hash, fields[i])
    end
  end
  return sum
end
for i, hash in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 + i])
  if limit > 0 and total(hash) >= limit then return i end
end
for _, hash in ipairs(KEYS) do redis.call('HINCRBY', hash, node, 1) end
return 0
"""

_RELEASE = """
for _, hash in ipairs(KEYS) do
  if redis.call('HINCRBY', hash, ARGV[1], -1) <= 0 then redis.call('HDEL', hash, ARGV[1]) end
end
return 0
"""

_FAIL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""

USER_CROWDED = "Too many connections for this user"
KEY_CROWDED = "Too many connections for this API key"


class ConnectionSlots:
    """Cluster-wide counts of open sockets per user and per API key."""

    def __init__(self, redis: Redis, node: str, prefix: str = "livetx:") -> None:
        self._redis = redis
        self._node = node
        self._prefix = prefix

    @property
    def alive_key(self) -> str:
        """The heartbeat key this node keeps alive (see :meth:`heartbeat`)."""
        return f"{self._prefix}node:{self._node}"

    def heartbeat(self) -> Deferred[Any]:
        return self._redis.command("SET", self.alive_key, "1", "EX", HEARTBEAT_TTL)

    def _keys(self, user: tuple[str, str], key_id: str | None) -> list[str]:
        keys = [f"{self._prefix}conn:user:{user[0]}:{user[1]}"]
        if key_id:
            keys.append(f"{self._prefix}conn:key:{key_id}")
        return keys

    def acquire(self, user: tuple[str, str], key_id: str | None, user_limit: int, key_limit: int) -> Deferred[str | None]:
        """Take a slot on every count, or say which limit is reached (None: taken).

        Fails (Redis unreachable) without taking anything; the caller then
        relies on the in-process limits.
        """
        keys = self._keys(user, key_id)
        args = [self._node, f"{self._prefix}node:", user_limit, key_limit][: 2 + len(keys)]
        d = self._redis.script(_ACQUIRE, keys, args)

        def unavailable(failure: Failure) -> Failure:
            warn_unreachable(failure, "count a connection cluster-wide (this process's limits apply)")
            return failure

        return d.addCallbacks(lambda n: {0: None, 1: USER_CROWDED, 2: KEY_CROWDED}[int(n)], unavailable)

    def release(self, user: tuple[str, str], key_id: str | None) -> Deferred[None]:
        d = self._redis.script(_RELEASE, self._keys(user, key_id), [self._node])
        return d.addCallbacks(lambda _: None, warn_unreachable, errbackArgs=("give back a connection slot",))

    def forget(self) -> Deferred[Any]:
        """This node stops: its slots go at once rather than when its heartbeat expires."""
        return self._redis.command("DEL", self.alive_key)


class SharedFailedAuth(FailedAuth):
    """:class:`FailedAuth` whose counts are the whole cluster's (see the module docstring)."""

    def __init__(self, limit: int, clock: IReactorTime, redis: Redis, prefix: str = "livetx:") -> None:
        super().__init__(limit, clock)
        self._redis = redis
        self._prefix = prefix
        self._channel = f"{prefix}blocked"
        self._until: dict[str, float] = {}
        redis.listen(self._channel, self._heard)

    def blocked(self, address: str) -> bool:
        until = self._until.get(address)
        if until is not None:
            if until > self._clock.seconds():
                return True
            del self._until[address]
        return super().blocked(address)

    def failed(self, address: str) -> None:
        super().failed(address)
        if self._limit <= 0:
            return
        d = self._redis.script(_FAIL, [f"{self._prefix}failed:{address}"], [int(self.WINDOW)])
        d.addCallback(self._counted, address)
        d.addErrback(warn_unreachable, "count a failed login")

    def _counted(self, reply: list[Any], address: str) -> None:
        count, ttl = int(reply[0]), int(reply[1])
        if count >= self._limit:
            self._redis.publish(self._channel, f"{max(ttl, 1)} {address}").addErrback(
                warn_unreachable, "announce a blocked address")

    def _heard(self, message: str) -> None:
        ttl, _, address = message.partition(" ")
        self._until[address] = self._clock.seconds() + float(ttl)
        if len(self._until) > self._max:
            del self._until[next(iter(self._until))]

