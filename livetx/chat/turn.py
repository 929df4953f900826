"""One running chat reply and its life (:data:`CHAT_TURN`), as :class:`livetx.chat.service.ChatService` runs it."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from livetx.chat.request import ChatRequest
from livetx.errors import ErrorCode, Outcome, ProviderError
from livetx.live.events import TurnListener
from livetx.live.machine import Table

#: A chat turn's life: it runs, then ends one of four ways once its text is stored.
CHAT_TURN = Table("chat turn", ["running", "interrupted", "stopped", "failed", "ended"], [
    {"trigger": "cancel", "source": "running", "dest": "interrupted"},
    {"trigger": "stop", "source": "running", "dest": "stopped"},
    {"trigger": "fail", "source": "running", "dest": "failed"},
    {"trigger": "end", "source": ["running", "interrupted", "stopped", "failed"], "dest": "ended"},
    {"trigger": "cancel", "source": ["interrupted", "stopped", "failed", "ended"], "dest": None},
    {"trigger": "stop", "source": ["interrupted", "stopped", "failed", "ended"], "dest": None},
], initial="running")


class ChatTurn:
    """One running reply; ``cancel`` (the client) or ``stop`` (the server) ends it and keeps what was produced.

    Its output pauses like a live turn's (:meth:`pause`): while its client
    reads slower than it writes, deltas are not sent but wait in ``reply``,
    which the turn keeps for storing anyway; :meth:`resume` sends what
    waited as one delta. So a reader that stops makes the turn write
    nothing more, instead of an event (with its ids) per delta.
    """

    def __init__(self, request: ChatRequest, listener: TurnListener, started: float) -> None:
        self.state = CHAT_TURN.initial
        self.request = request
        #: Told of the turn's life, as a live turn's listener is (:mod:`livetx.live.events`).
        self.listener = listener
        #: When the turn started; the listener's times count from it.
        self.started = started
        self._reported = False
        self.reply: list[str] = []
        self.done: Deferred[None] = Deferred()
        self.upstream: Deferred[Any] | None = None
        #: Known once the session is open; every event of the turn names it.
        self.session_id = request.session_id
        self.paused = False
        #: How many pieces of ``reply`` went out as deltas.
        self._sent = 0
        #: Sends a delta (streaming requests only, once the turn runs).
        self._send: Callable[[str], None] | None = None

    def send_deltas(self, send: Callable[[str], None]) -> None:
        """Where the turn's deltas go (a request that does not stream has none)."""
        self._send = send

    def add(self, text: str) -> None:
        """A delta from the model: kept, and sent unless the output is paused."""
        self.reply.append(text)
        if not self.paused:
            self.flush()

    def flush(self) -> None:
        """Send, as one delta, the text that waited while the output was paused."""
        if self._send is not None and self._sent < len(self.reply):
            text = "".join(self.reply[self._sent:])
            self._sent = len(self.reply)
            self._send(text)

    def pause(self) -> None:
        """The client's transport is backed up: deltas wait until :meth:`resume`."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.flush()

    @property
    def running(self) -> bool:
        """Nothing has stopped it yet: its model may still write."""
        return self.state == "running"

    @property
    def interrupted(self) -> bool:
        return self.state in ("interrupted", "stopped")

    @property
    def outcome(self) -> Outcome:
        """How the turn ended (a server stop drops it, as it drops a live turn)."""
        return _OUTCOMES.get(self.state, Outcome.OK)

    def ended(self, now: float, values: dict[str, Any], outcome: Outcome | None = None) -> None:
        """Tell the listener the turn is over (once, before its ``end``)."""
        if not self._reported:
            self._reported = True
            self.listener.turn_ended(outcome or self.outcome, now - self.started, values)

    def error(self, code: ErrorCode, failure: Failure | None = None) -> None:
        """Tell the listener an error event is going out (and which provider failed, if one did)."""
        if failure is not None and isinstance(failure.value, ProviderError):
            self.listener.provider_failed(failure.value.kind)
        self.listener.error_sent(code)

    def cancel(self) -> None:
        CHAT_TURN.fire(self, "cancel")
        self._cancel_upstream()

    def stop(self) -> None:
        CHAT_TURN.fire(self, "stop")
        self._cancel_upstream()

    def _cancel_upstream(self) -> None:
        if self.upstream is not None and not self.upstream.called:
            self.upstream.cancel()


_OUTCOMES = {"interrupted": Outcome.INTERRUPTED, "stopped": Outcome.DROPPED, "failed": Outcome.FAILED}
