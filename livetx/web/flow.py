"""Flow control of one client stream: pace what is sent by how fast the client reads.

A socket (:mod:`livetx.web.protocol`) and an SSE stream
(:class:`livetx.web.http_api.EventStream`) register a :class:`SendBuffer`
with their transport as its push producer; the transport says when its
buffer is full and when it has drained.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class SendBuffer:
    """Registered with the socket's transport, which says when its buffer is full.

    While the transport is paused (the client reads slower than we write),
    ``pause`` holds back the session's speech, the bulk of what it sends;
    every byte still sent waits in memory, and past ``limit`` of them the
    client is too slow to serve and :meth:`sent` says so.
    """

    def __init__(self, limit: int, pause: Callable[[], None] = lambda: None,
                 resume: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.paused = False
        self.waiting = 0
        self._pause = pause
        self._resume = resume

    def pauseProducing(self) -> None:
        self.paused = True
        self._pause()

    def resumeProducing(self) -> None:
        self.paused = False
        self.waiting = 0
        self._resume()

    def stopProducing(self) -> None:
        self.paused = True

    def sent(self, size: int) -> bool:
        """Account for ``size`` bytes written; true when the client is hopelessly behind."""
        if self.paused:
            self.waiting += size
        return 0 < self.limit < self.waiting
