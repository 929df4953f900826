"""Which API keys stopped being valid, told to whoever holds something opened with one.

A revoked key must not keep working through a socket it opened before. The
signal is a set of key ids; :class:`KeyRevocations` makes it for one
process by asking the key store every half second which keys are revoked
(a ``stat`` of the key file, re-read only when it changed), and which
exist at all. Revocation is read from the revoked records themselves: a
key made, used and revoked between two looks was never seen active, so a
diff of active sets would miss it and leave its sockets open. A cluster can
feed the same listeners from elsewhere (a pub/sub channel) through
:meth:`KeyRevocations.publish`.
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

_log = Logger()

Listener = Callable[[frozenset[str]], None]

#: Seconds between two looks at the key store.
INTERVAL = 0.5


class KeyRevocations(Service):
    """Polls the key store while the server runs; tells listeners the ids newly revoked or deleted.

    ``revoked_ids`` names every revoked key the store holds; ``active_ids``
    the live ones, so that a key deleted from the store (not revoked) is
    noticed too.
    """

    def __init__(self, revoked_ids: Callable[[], frozenset[str]], active_ids: Callable[[], frozenset[str]],
                 clock: IReactorTime, interval: float = INTERVAL) -> None:
        self._revoked_ids = revoked_ids
        self._active_ids = active_ids
        self._interval = interval
        self._listeners: list[Listener] = []
        self._known: tuple[frozenset[str], frozenset[str]] | None = None
        self._loop = LoopingCall(self._poll)
        self._loop.clock = clock

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, revoked: frozenset[str]) -> None:
        """Tell every listener that these keys are no longer valid."""
        for listener in self._listeners:
            listener(revoked)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _poll(self) -> None:
        try:
            revoked, active = self._revoked_ids(), self._active_ids()
        except Exception:  # a store that cannot answer now may answer next time
            _log.failure("Could not read the API keys")
            return
        # Revoked before the server started: no socket can hold them yet.
        was_revoked, was_active = self._known or (revoked, active)
        gone = (revoked - was_revoked) | (was_active - active - revoked)
        self._known = revoked, active
        if gone:
            _log.info("API keys revoked: {ids}", ids=", ".join(sorted(gone)))
            self.publish(gone)
