"""txredisapi internals the cluster's Redis client (:mod:`livetx.cluster.redis`) leans on.

txredisapi tells nobody when a connection of a factory is made or lost, and
a pool says nothing about whether it is connected. The Redis client needs
both: a command must fail at once while Redis is away (not wait for a
reconnect's handshake), and subscriptions must be made again on every new
subscribing connection. So:

- :func:`lost_after_connecting` reads the pool's factory (the handler's
  ``_factory``): its ``size`` (connections now) and ``deferred`` (set to
  None once the first connection is ready);
- :class:`Subscriptions` overrides the factory's ``addConnection`` and
  ``delConnection``, which txredisapi calls as connections come and go;
- :func:`reconnect_every` sets the backoff of the pool's factory (reached
  through ``_factory`` too) and of a subscriber factory: the class
  attributes ``initialDelay``, ``factor`` and ``maxDelay`` its
  ``retryDelay`` reads.

``tests/test_fences.py`` checks both still have that shape.
"""

from __future__ import annotations

from typing import Any

import txredisapi


def lost_after_connecting(pool: Any) -> bool:
    """The pool was connected once and has no connection now."""
    factory = pool._factory
    return not factory.size and factory.deferred is None


def reconnect_every(seconds: float, first: float, pool: Any, *factories: Any) -> None:
    """Retry lost connections ``first`` seconds after a loss, then at most every ``seconds``."""
    for factory in (pool._factory, *factories):
        factory.initialDelay, factory.factor, factory.maxDelay = first, 2.0, seconds


class Subscriptions(txredisapi.SubscriberFactory):  # type: ignore[misc]
    """A subscriber factory told of each connection made (and open) and each one lost."""

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn.connected:
            self.connection_made(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.connection_lost(conn)

    def connection_made(self, conn: Any) -> None:
        """A subscribing connection is ready."""

    def connection_lost(self, conn: Any) -> None:
        """A subscribing connection closed (txredisapi reconnects)."""
