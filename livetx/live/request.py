"""The request in progress: made ready, replied to, stored; or stopped or withdrawn on the way.

:class:`livetx.live.session.LiveSession` says *when* (its state machine);
this keeps what a request is at each moment and ends it the one right way:

- ``preparing``: its transcript or the stored history is awaited
  (:mod:`livetx.live.prepare` sets it); stopping it cancels the wait;
- running: a :class:`~livetx.live.turn.Turn` writes and speaks the reply;
  :meth:`Request.stop` (barge-in, or the server stops) silences it,
  ``stop_play`` goes out at once, and what was said is stored, marked
  interrupted;
- held: talk mode keeps a complete voice reply unstored (no ``end``) while
  the user may still go on with its request (below);
- storing: the reply is kept (both sides at once,
  :class:`~livetx.live.history.Conversation`), then ``end`` goes out, or
  ``interrupted`` ends if an interrupt came meanwhile.

Talk mode: speech that starts while a voice turn's reply is still unheard
(no audio sent, no tool called), or within ``continue_ms`` of the end of its
speech (a pause, not a reply heard out: ``stop_play`` then stops what little
played), continues that request instead of barging in: the turn is
withdrawn (:meth:`Request.withdraw`), nothing of it stored, and its audio
becomes the start of the new utterance, answered as one request under the
same turn id (docs/protocol-extensions.md, "A request in two breaths").
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from livetx.domain import Engines, Exchange
from livetx.live.capture import Segment
from livetx.live.events import Outcome
from livetx.live.history import Conversation
from livetx.live.ledger import TurnLedger
from livetx.live.settings import Settings
from livetx.live.speculation import taken_by
from livetx.live.turn import Turn, TurnResult


class Owner(Protocol):
    """The session a request belongs to: its state machine and its settings."""

    state: str
    settings: Settings

    def fire(self, event: str, **kwargs: Any) -> bool:
        """Run a session event."""

    def fire_safely(self, event: str, **kwargs: Any) -> None:
        """Run a session event; a refusal becomes an error frame."""


class Request:
    """One session's request in progress; the session's state machine says when it moves on."""

    __slots__ = ("_owner", "_clock", "_engines", "_turns", "_conversation", "preparing", "_turn", "_paused",
                 "_storing", "segment", "_withdrawn", "_held", "closed", "closing")

    def __init__(
        self, owner: Owner, clock: IReactorTime, engines: Engines, turns: TurnLedger, conversation: Conversation,
    ) -> None:
        self._owner = owner
        self._clock = clock
        self._engines = engines
        self._turns = turns
        self._conversation = conversation
        #: What the request waits for before the model starts: a transcript, or the
        #: stored history of the conversation. Interrupting cancels it.
        self.preparing: Deferred[Any] | None = None
        self._turn: Turn | None = None
        #: The client reads slower than we write (:meth:`pause`).
        self._paused = False
        #: A finished reply is being stored: an interrupt now unwinds once it is.
        self._storing = False
        #: The running voice turn's segment, which speech that continues its request takes back.
        self.segment: Segment | None = None
        #: While a withdrawn turn unwinds: it is not stored (its id goes to the request's rest: TurnLedger).
        self._withdrawn = False
        #: A voice turn's complete reply, kept unstored (no ``end``) while the user may still go on
        #: with its request (``continue_ms``); the call that stores it once that window closes.
        self._held: tuple[IDelayedCall, TurnResult, str] | None = None
        #: The connection is gone: nothing more is sent, and what was said is stored.
        self.closed = False
        #: The server stops this turn (``stop``): it ends as dropped, not as a barge-in.
        self.closing = False

    @property
    def turn(self) -> Turn | None:
        """The reply being written and spoken, if one is."""
        return self._turn

    def start(self, text: str, started: float) -> None:
        """The model may start on the user's ``text``: run the reply."""
        self.preparing = None
        engines = self._engines
        turn = Turn(
            clock=self._clock,
            llm=taken_by(engines.llm, self.segment),  # its first call may have begun at a pause
            tts=engines.tts,
            emit=self._turns.emit,
            messages=self._conversation.context(engines.system_prompt, text),
            started_at=started,
            tts_concurrency=engines.tts_concurrency,
            binary_audio=self._owner.settings.binary_audio,
            listener=self._turns.report,
            voice=self._owner.settings.voice,
        )
        self._turn = turn
        if self._paused:
            turn.pause()
        turn.start().addCallback(self._over, text)

    def pause(self) -> None:
        """The socket cannot take more for now: the running turn starts no more speech."""
        self._paused = True
        if self._turn is not None:
            self._turn.pause()

    def resume(self) -> None:
        self._paused = False
        if self._turn is not None:
            self._turn.resume()

    def goes_on(self, start_ms: int) -> bool:
        """New speech continues the running voice turn's request: its reply is unheard, or the
        user resumed within ``continue_ms`` of the end of its speech and no tool has acted."""
        segment, turn, held = self.segment, self._turn, self._held
        if segment is None or self.closing:
            return False
        if held is None and (turn is None or turn.unheard):
            return True
        acted = bool(held[1].tools) if held is not None else turn is not None and turn.acted
        pause = None if segment.voiced_ms is None else start_ms - segment.voiced_ms
        return not acted and pause is not None and 0 <= pause <= self._owner.settings.continue_ms

    def end_without_reply(self, outcome: Outcome) -> None:
        self._turns.ended(outcome)
        self._end_turn()

    def _end_turn(self) -> None:
        """The turn is over and kept: say so (``end``), and take the next."""
        self._owner.fire("turn_done")
        self._turns.emit({"t": "end"})
        self._turns.release()

    def _over(self, result: TurnResult, text: str) -> None:
        """Store the turn (both sides at once), then end it: ``end``, or the end of ``interrupted``."""
        self._turn = None
        if self._withdrawn:
            self._unwithdrawn()
            return
        left = self._window_left()
        if left > 0 and not (result.interrupted or self.closed or self.closing):
            self._held = (self._clock.callLater(left, self._settle, result, text), result, text)
            return
        self._settle(result, text)

    def _window_left(self) -> float:
        """Seconds until speech that would still continue the running voice turn's request can no
        longer be heard: ``continue_ms`` after its speech ended, plus the detector's ``min_speech_ms``."""
        segment, settings = self.segment, self._owner.settings
        if segment is None or segment.voiced_at is None:
            return 0.0
        window = (settings.continue_ms + settings.min_speech_ms) / 1000
        return segment.voiced_at + window - self._clock.seconds()

    def _settle_held(self) -> None:
        """Store the held reply now (a barge-in past the window, or the connection or server ends)."""
        assert self._held is not None
        call, result, text = self._held
        call.cancel()
        self._settle(result, text)

    def _settle(self, result: TurnResult, text: str) -> None:
        """Store a turn that is over and kept; no speech can take it back any more."""
        self._held = None
        self.segment = None
        outcome = Outcome.INTERRUPTED if result.interrupted else Outcome.FAILED if result.failed else Outcome.OK
        self._turns.ended(Outcome.DROPPED if self.closed or self.closing else outcome)
        stored = self._keep(text, result, outcome)
        if self.closed:
            stored.addBoth(lambda _: self._turns.release())
        elif result.interrupted:
            stored.addBoth(lambda _: self._unwound())
        else:
            self._storing = True
            stored.addBoth(lambda _: self._stored())

    def _stored(self) -> None:
        """A finished reply is stored: ``end`` it, unless an interrupt came meanwhile (then unwind)."""
        self._storing = False
        if self._owner.state == "interrupted":
            self._unwound()
        else:
            self._end_turn()

    def _keep(self, text: str, result: TurnResult, outcome: Outcome) -> Deferred[None]:
        if not result.reply and result.failed:
            return succeed(None)
        exchange = Exchange(text, result.reply, result.interrupted, result.tools)
        turns = self._turns
        return self._conversation.keep(turns.turn_id, result, exchange, turns.input_type, turns.values(outcome))

    def _unwound(self) -> None:
        wake = self._turns.let_go()  # before a queued turn begins its own
        self._owner.fire_safely("unwound")
        wake()  # its waiters see the session idle, or busy with the queued turn, never unwinding

    def stop(self) -> None:
        """Barge-in: silence the turn and tell the client to stop playing, then unwind.

        ``stop_play`` goes out at once; the session stays ``interrupted`` until
        what was said of the reply is stored.
        """
        if self._turn is not None:
            self._turn.silence()  # a cancelled tool call's tool_result goes before stop_play
        self._turns.emit({"t": "stop_play"})
        if self._held is not None:
            self._settle_held()  # a complete reply: :meth:`_stored` unwinds once it is kept
            return
        if self._turn is not None:
            self._turn.interrupt()  # its result comes back through _over
            return
        if self._storing:
            return  # the reply is complete; :meth:`_stored` unwinds once it is kept
        if self.preparing is not None:
            self.preparing.cancel()
        self._turns.ended(Outcome.DROPPED if self.closing else Outcome.INTERRUPTED)
        self._unwound()

    def withdraw(self) -> None:
        """The user went on with the request: drop the turn unstored, unreported and unsaid (no
        ``end``; ``stop_play`` only if its audio had started); its number goes to the rest of the request."""
        self._withdrawn = True
        self.segment = None
        if self._held is not None:
            self._held[0].cancel()
            self._held = None
            self._turns.emit({"t": "stop_play"})  # all its audio went out
            self._unwithdrawn()
            return
        if self._turn is not None and not self._turn.unheard:
            self._turn.silence()
            self._turns.emit({"t": "stop_play"})
        if self._turn is not None:
            self._turn.interrupt()  # its result comes back through _over, which keeps nothing
            return
        if self.preparing is not None:
            self.preparing.cancel()
        self._unwithdrawn()

    def _unwithdrawn(self) -> None:
        self._withdrawn = False
        self._turns.withdraw()
        self._unwound()

    def close(self) -> None:
        """The connection is gone: stop all work (what was said is stored)."""
        self.closed = True
        if self._held is not None:
            self._settle_held()  # stored, then let go
            return
        if self._turn is not None:
            self._turn.interrupt()  # stored through _over, which then lets go
            return
        if self.preparing is not None:
            self.preparing.cancel()
        self._turns.ended(Outcome.DROPPED)
        self._turns.release()
