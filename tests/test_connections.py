"""The connection tracker knows a socket only through its small interface (:class:`Tracked`)."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from livetx.config import ServerConfig
from livetx.errors import CloseCode
from livetx.web.admission import Admission
from livetx.web.connections import ConnectionTracker, Tracked


class Socket:
    """A socket as the tracker sees it, recording what it is told."""

    def __init__(self, username: str, key_id: str | None = None, busy: bool = False) -> None:
        self.admission = Admission(username=username, key_id=key_id)
        self.finished: Deferred[None] | None = Deferred()
        self.busy = busy
        self.over: Deferred[None] = Deferred() if busy else succeed(None)
        self.told: list[tuple[str, object]] = []

    def turns_over(self) -> Deferred[None]:
        return self.over

    def stop_listening(self) -> None:
        self.told.append(("stop_listening", None))

    def stop_turn(self) -> None:
        self.told.append(("stop_turn", None))
        if self.busy:
            self.busy = False
            self.over.callback(None)

    def revoke(self, reason: str) -> None:
        self.told.append(("revoke", reason))

    def close_with(self, code: int, reason: str) -> None:
        self.told.append(("close", code))
        assert self.finished is not None
        self.finished.callback(None)


def test_sockets_count_per_user_and_key_and_a_revoked_keys_are_told() -> None:
    tracker = ConnectionTracker()
    ann, keyed = Socket("ann"), Socket("ann", key_id="k1")
    sockets: list[Tracked] = [ann, keyed]
    for socket in sockets:
        tracker.add(socket)
    limits = ServerConfig(max_connections_per_user=1, max_connections_per_key=1)
    assert tracker.crowded(Admission(username="ann"), limits) == "Too many connections for this user"
    assert tracker.crowded(Admission(username="bob", key_id="k1"), limits) == "Too many connections for this API key"
    tracker.close_keys(frozenset({"k1"}))
    assert keyed.told == [("revoke", "API key revoked")] and ann.told == []
    tracker.discard(ann)
    assert len(tracker) == 1 and tracker.crowded(Admission(username="ann"), limits) is None


def test_stopping_waits_out_the_grace_then_stops_the_turn_and_closes_going_away() -> None:
    clock = Clock()
    tracker = ConnectionTracker(clock, grace=10.0)
    busy, idle = Socket("ann", busy=True), Socket("bob")
    tracker.add(busy)
    tracker.add(idle)
    done = tracker.stopService()
    assert busy.told == [("stop_listening", None)] and not done.called
    clock.advance(10.0)
    assert busy.told == [("stop_listening", None), ("stop_turn", None), ("close", CloseCode.GOING_AWAY)]
    assert idle.told[-1] == ("close", CloseCode.GOING_AWAY)
    assert done.called and tracker.drained.called
