"""A live session's turn bookkeeping: which turn runs, since when, what waits, who is told.

:class:`livetx.live.session.LiveSession` decides *when* a turn starts and
ends (its state machine); the ledger keeps the numbers that go with it, so
the session reads as the protocol and this as the accounts:

- each turn's id, and the way out that tags its frames with it (``turn``);
- when it started and what it was, until it is reported ended (once);
- the turn asked for while another unwinds (``interrupted``), started once
  that one is over;
- the Deferred that fires when the running turn is over, stored and ended.

Reporting goes to the session's :class:`~livetx.live.events.TurnListener`,
the ``metrics`` frames (:class:`~livetx.live.events.MetricsFrames`) first.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from livetx.deferreds import waiter_for
from livetx.errors import ErrorCode, FrameError
from livetx.live import frames
from livetx.live.events import Listeners, MetricsFrames, Outcome, TurnListener
from livetx.live.frames import Frame
from livetx.live.rules import BUSY

#: Sends a frame, or (binary audio transport only) one binary message of audio.
Emit = Callable[[Frame | bytes], None]


class TurnLedger:
    """The numbers of one session's turns; the session's state machine says when they change."""

    __slots__ = ("_clock", "_send", "metrics", "report", "turn_id", "emit", "_started", "input_type", "queued",
                 "_dropped", "_over", "_continues")

    def __init__(self, clock: IReactorTime, send: Emit, listener: TurnListener | None = None) -> None:
        self._clock = clock
        #: The session's way out (which stops sending once it closes).
        self._send = send
        self.metrics = MetricsFrames(self._emit_metrics)
        #: Told of every event of every turn, and of error frames between turns.
        self.report: TurnListener = self.metrics if listener is None else Listeners(self.metrics, listener)
        #: The last turn's id; every frame of a turn carries it as ``turn``.
        self.turn_id = 0
        #: The running turn's way out: its frames tagged with its id.
        self.emit: Emit = send
        #: When the running turn started, until it is reported ended.
        self._started: float | None = None
        self.input_type = "text"
        #: While ``interrupted``: the turn asked for meanwhile, started once unwound.
        self.queued: Callable[[], None] | None = None
        #: What lets go of the queued turn's work if it never starts (a reply begun on its speech).
        self._dropped: Callable[[], None] | None = None
        #: Fires when the running turn is over, stored, and ``end`` (or ``stop_play``) sent.
        self._over: Deferred[None] | None = None
        #: A withdrawn turn's number, which the voice turn that continues its request keeps.
        self._continues: int | None = None

    def begin(self, input_type: str, started: float, assembled: float | None = None) -> None:
        """Number the turn that starts now (a continued request keeps its number), tag its frames, report it."""
        continues, self._continues = self._continues, None
        if continues is None or input_type != "audio":
            self.turn_id += 1
        turn_id = self.turn_id
        send = self._send

        def emit(frame: Frame | bytes) -> None:
            send(frame if isinstance(frame, bytes) else {**frame, "turn": turn_id})

        self.emit = emit
        self._started, self.input_type = started, input_type
        self._over = Deferred()
        self.report.turn_started(turn_id, input_type, assembled)

    def _emit_metrics(self, frame: Frame) -> None:
        self.emit(frame)

    def error(self, code: ErrorCode, message: str) -> None:
        """Send the running turn an error frame, and report it sent."""
        self.report.error_sent(code)
        self.emit(frames.error(code, message))

    def ended(self, outcome: Outcome) -> None:
        """Report the running turn over, once: its last ``metrics``, then its listeners."""
        if self._started is not None:
            started, self._started = self._started, None
            seconds = self._clock.seconds() - started
            self.report.turn_ended(outcome, seconds, self.metrics.ended(outcome, seconds))

    def withdraw(self) -> None:
        """The running turn is taken back (the user went on before hearing it): it is not reported,
        and the voice turn that continues its request keeps its number."""
        self._started = None
        self._continues = self.turn_id

    def values(self, outcome: Outcome) -> dict[str, Any]:
        """What the store keeps with the turn's reply: its ``metrics`` and its outcome."""
        return {**self.metrics.values, "outcome": outcome.value}

    def release(self) -> None:
        """The turn is over, stored and ended: whoever waits on :meth:`over` goes on."""
        self.let_go()()

    def let_go(self) -> Callable[[], None]:
        """Forget the running turn now (a queued one may begin), but wake whoever waits on :meth:`over`
        only with the call returned: once the session has left the turn's state, so that a waiter
        that then asks whether the session is busy is told the truth (the drain asks again, and
        a session still unwinding but already over sent it round in circles)."""
        over, self._over = self._over, None
        return _nothing if over is None else functools.partial(over.callback, None)

    def over(self) -> Deferred[None]:
        """Fires once no turn runs: at once when none does, else after the running one is stored and ended."""
        return succeed(None) if self._over is None else waiter_for(self._over)

    def queue(self, turn: Callable[[], None], dropped: Callable[[], None] | None = None) -> None:
        """Keep a turn asked for while the interrupted one unwinds; a second one is refused.

        ``dropped`` is called if the turn never starts (:meth:`drop_queued`).
        """
        if self.queued is not None:
            raise FrameError(*BUSY)
        self.queued, self._dropped = turn, dropped

    def drop_queued(self) -> None:
        """The queued turn will not start (the connection closes, the server stops): let go of its work."""
        dropped, self.queued, self._dropped = self._dropped, None, None
        if dropped is not None:
            dropped()

    def start_queued(self) -> None:
        turn, self.queued, self._dropped = self.queued, None, None
        assert turn is not None
        turn()


def _nothing() -> None:
    """No turn was running: nobody to wake."""
