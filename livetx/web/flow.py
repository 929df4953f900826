"""Flow control of one client stream: pace what is sent by how fast the client reads.

A socket (:mod:`livetx.web.protocol`) and an SSE stream
(:class:`EventStream`) register a :class:`SendBuffer` with their transport
as its push producer; the transport says when its buffer is full and when
it has drained.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from livetx.chat.service import ChatTurn, Event

_log = Logger()


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


class EventStream:
    """Server-Sent Events to one HTTP client, which may read slowly or leave.

    Its transport pauses and resumes the turn's output, as a socket's does
    a live turn's (:meth:`livetx.live.session.LiveSession.pause_output`).
    """

    def __init__(self, request: Request, limit: int, ended: Callable[[Any], None] | None = None) -> None:
        self._request = request
        #: Told (with the HTTP channel) once the response is finished; its last bytes may still be buffered.
        self._ended = ended
        self._turn: ChatTurn | None = None
        self._buffer = SendBuffer(limit, pause=self._pause, resume=self._resume)
        self.open = True
        request.registerProducer(self._buffer, True)
        request.notifyFinish().addErrback(self._gone)

    def follow(self, turn: ChatTurn) -> None:
        """The turn whose events this stream carries, and whose output it paces."""
        if not self.open:  # already over (a turn that failed at once)
            return
        self._turn = turn
        if self._buffer.paused:
            turn.pause()

    def _pause(self) -> None:
        if self._turn is not None:
            self._turn.pause()

    def _resume(self) -> None:
        if self._turn is not None:
            self._turn.resume()

    def deliver(self, event: Event) -> None:
        if not self.open:
            return  # the turn goes on and is stored; nobody is reading
        data = b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n"
        # Counted before it is written: what would pass the limit never waits in memory.
        if self._buffer.sent(len(data)):
            _log.warn("Cutting an event stream: its client reads too slowly")
            self._close()
            transport: Any = self._request.transport
            transport.abortConnection()
            return
        self._request.write(data)
        if event.get("type") == "end":
            channel = self._request.channel
            self._close()
            self._request.finish()
            if self._ended is not None:
                self._ended(channel)

    def _close(self) -> None:
        self.open = False
        self._request.unregisterProducer()
        self._let_go()

    def _gone(self, _: Failure) -> None:
        self.open = False  # the channel, and its producer, went with the connection
        self._let_go()

    def _let_go(self) -> None:
        """Nobody reads any more: the turn runs on unpaused (it is stored), and nothing of it is kept here."""
        turn, self._turn = self._turn, None
        if turn is not None:
            turn.resume()
