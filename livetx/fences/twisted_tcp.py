"""Twisted's TCP listening port internals that ``--workers`` leans on.

Workers share one listening socket; each new connection wakes them all and
the first to call ``accept`` gets it. Twisted's port accepts in a loop of up
to ``numberAccepts`` (100 to start, growing under load) per wake-up, so the
worker that wakes first takes a whole burst of sockets, and keeps them for
their lifetime. Accepting one connection per wake-up lets the idlest worker,
the one back in ``epoll`` first, take the next: the classic pre-fork balance.
"""

from __future__ import annotations

from typing import Any


def accept_one_at_a_time(port: Any) -> None:
    """Make a listening ``twisted.internet.tcp.Port`` accept one connection per wake-up."""
    read = port.doRead

    def doRead() -> Any:
        port.numberAccepts = 1  # doRead raises it again after a full loop
        return read()

    port.numberAccepts = 1
    port.doRead = doRead
