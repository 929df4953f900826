"""Small Deferred helpers used by more than one layer."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred


def waiter_for(d: Deferred[Any]) -> Deferred[None]:
    """A new Deferred that fires (with None) when ``d`` fires either way.

    ``d``'s result is passed on untouched, and cancelling the waiter leaves
    ``d`` running: many parties can wait on one shared operation.
    """
    waiter: Deferred[None] = Deferred()

    def release(result: Any) -> Any:
        if not waiter.called:
            waiter.callback(None)
        return result

    d.addBoth(release)
    return waiter
