"""One live-mode conversation: a state machine fed by client frames.

This module knows nothing about sockets. The protocol layer hands it decoded
frames and a function to send frames back; everything in between — which
frame is allowed when, running turns, barge-in, the history the model sees —
happens here, so it can be tested with a fake clock. Capturing the voice
(push to talk, and talk mode's detector) is :mod:`livetx.live.capture`; the
turns' numbers, timing and reporting are :mod:`livetx.live.ledger`.

The states (:data:`SESSION`): ``idle``; ``capturing`` (a segment is open and
no turn runs); ``processing`` (a turn runs); ``interrupted`` (a turn was
stopped and is unwinding: its upstream calls are cancelled and
``stop_play`` is sent at once, and the state lasts until its partial reply
is stored). While ``interrupted`` every frame is taken; one that starts a
turn (``text_input``, ``end_speaking``, talk mode's end of speech) waits and
starts once the interrupted turn is unwound, and a second such frame gets
``PROCESSING_ERROR`` as in ``processing``.

Talk mode: speech that starts while a voice turn's reply is still unheard
(no audio sent, no tool called), or within ``continue_ms`` of the end of its
speech (a pause, not a reply heard out: ``stop_play`` then stops what little
played), continues that request instead of barging in: the turn is
withdrawn, nothing of it stored, and its audio becomes the start of the new
utterance, answered as one request under the same turn id
(docs/protocol-extensions.md, "A request in two breaths").
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from transitions import EventData, MachineError
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.deferreds import waiter_for
from livetx.domain import Engines, Exchange, Memory
from livetx.errors import ErrorCode
from livetx.live import frames
from livetx.live.capture import Capture, Segment
from livetx.live.client_frames import PARSERS, pcm_fields
from livetx.live.events import Listeners, Outcome, TurnListener
from livetx.live.frames import Frame, FrameError
from livetx.live.history import Conversation
from livetx.live.ledger import TurnLedger
from livetx.live.rules import BUSY, NO_SEGMENT, SERVER_FRAMES, SESSION
from livetx.live.settings import Settings, updated
from livetx.live.speculation import speculate, taken_by
from livetx.live.turn import Emit, Turn, TurnResult, report_failure

_log = Logger()

#: The states in which a turn runs (or unwinds after an interrupt): :attr:`LiveSession.busy`.
BUSY_STATES = frozenset({"processing", "interrupted"})

class LiveSession:
    """A connection's conversation; ``receive`` frames in, ``emit`` frames out."""

    def __init__(
        self,
        *,
        username: str,
        engines: Engines,
        clock: IReactorTime,
        emit: Emit,
        memory: Memory | None = None,
        listener: TurnListener | None = None,
    ) -> None:
        self.state = SESSION.initial
        self.username = username
        self._engines = engines
        self._clock = clock
        self._emit = emit
        self._closed = False
        #: The server stops this turn (``stop``): it ends as dropped, not as a barge-in.
        self._closing = False
        self.capture = Capture(self, clock, engines.stt, engines.max_segment_seconds, engines.turn_end)
        self._turn: Turn | None = None
        #: The client reads slower than we write (see :meth:`pause_output`).
        self._output_paused = False
        #: What a turn waits for before the model starts: a transcript, or the
        #: stored history of the conversation. Interrupting cancels it.
        self._preparing: Deferred[Any] | None = None
        #: A finished reply is being stored: an interrupt now unwinds once it is.
        self._storing = False
        self._turns = TurnLedger(clock, self.emit, self.capture.echo if listener is None
                                 else Listeners(self.capture.echo, listener))
        self._report = self._turns.report
        self.settings = Settings(speculative=engines.speculative)
        self._conversation = Conversation(username, engines.history_turns, memory, engines.context_bytes)
        #: The running voice turn's segment, which speech that continues its request takes back.
        self._voice_segment: Segment | None = None
        #: While a withdrawn turn unwinds: it is not stored (its id goes to the request's rest: TurnLedger).
        self._withdrawn = False
        #: A voice turn's complete reply, kept unstored (no ``end``) while the user may still go on
        #: with its request (``continue_ms``); the call that stores it once that window closes.
        self._held: tuple[IDelayedCall, TurnResult, str] | None = None

    @property
    def history(self) -> tuple[Exchange, ...]:
        return self._conversation.exchanges

    @property
    def busy(self) -> bool:
        """A turn runs, or is unwinding after an interrupt."""
        return self.state in BUSY_STATES

    def turn_over(self) -> Deferred[None]:
        """Fires once no turn runs: at once when idle, else after the running one is stored and ended."""
        return self._turns.over()

    # -- input -------------------------------------------------------------

    def receive(self, frame: Frame) -> None:
        """Handle one decoded client frame; never raises."""
        kind = frame["t"]
        parse = PARSERS.get(kind)
        if parse is None:
            self.error(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"unknown message type {kind!r}")
            return
        self._safely(kind, lambda: self.fire(kind, **parse(frame)))

    def _safely(self, kind: str, fire: Callable[[], bool | None]) -> None:
        """Run an event; a refusal or a bug becomes an error frame, never an exception."""
        try:
            if fire() is False:
                self._reject(kind)
        except MachineError:
            self._reject(kind)
        except FrameError as e:
            self.error(e.code, e.message)
        except Exception:
            _log.failure("Bug while handling a {kind!r} event", kind=kind)
            self.error(ErrorCode.INTERNAL_ERROR, "internal error")

    def receive_audio(self, pcm: bytes) -> None:
        """A binary message: raw PCM, taken as a ``speaking_part`` (binary audio transport)."""
        self._safely("speaking_part", lambda: self.fire("speaking_part", **pcm_fields(pcm)))

    def fire(self, event: str, **kwargs: Any) -> bool:
        """Run ``event`` through the machine; False when a condition refused it."""
        return SESSION.fire(self, event, **kwargs)

    def fire_safely(self, event: str, **kwargs: Any) -> None:
        """The capture's events (:class:`livetx.live.capture.Owner`)."""
        self._safely(event, lambda: self.fire(event, **kwargs))

    def emit(self, frame: Frame | bytes) -> None:
        self._emit(frame)

    def error(self, code: ErrorCode, message: str, emit: Emit | None = None) -> None:
        """Send an error frame (``emit``: the running turn's way out), and report it sent."""
        self._report.error_sent(code)
        (emit or self._emit)(frames.error(code, message))

    def pause_output(self) -> None:
        """The socket cannot take more for now: the running turn starts no more speech."""
        self._output_paused = True
        if self._turn is not None:
            self._turn.pause()

    def resume_output(self) -> None:
        self._output_paused = False
        if self._turn is not None:
            self._turn.resume()

    def close(self) -> None:
        """The connection is gone: stop all work and send nothing more (what was said is stored)."""
        self._emit = _discard
        self._closed = True
        self._turns.queued = None
        self.stop_listening()
        if self._held is not None:
            self._settle_held()  # stored, then let go
            return
        if self._turn is not None:
            self._turn.interrupt()  # stored through _turn_over, which then lets go
            return
        if self._preparing is not None:
            self._preparing.cancel()
        self._turns.ended(Outcome.DROPPED)
        self._turns.release()

    def stop(self) -> None:
        """The server stops: end a running turn as ``interrupt`` does; it is stored, marked interrupted."""
        self._closing = True
        self._turns.queued = None  # a turn asked for during an interrupt does not start now
        if self.state == "processing":
            self._safely("interrupt", lambda: self.fire("interrupt"))

    def stop_listening(self) -> None:
        """Drop an utterance half-heard and detect no more (the server is stopping)."""
        self.capture.stop_listening()

    def paused(self, segment: Segment, text: str) -> None:
        """Talk mode heard a pause and transcribed it (the capture's ``Owner``): with ``speculative``
        and no turn running, the reply's model call starts now, unsent (livetx.live.speculation)."""
        if (self.settings.speculative and self.state == "capturing" and not self._closing
                and self._conversation.loading is None):
            messages = self._conversation.context(self._engines.system_prompt, text)
            segment.ahead = speculate(self._engines.llm, messages, self._report)

    def _update_settings(self, event: EventData) -> None:
        before, self.settings = self.settings, updated(self.settings, event.kwargs["frame"], self._engines.turn_end)
        if _detection(before) != _detection(self.settings):
            self.capture.restart_detection(self.settings)
        self._emit(self.settings.frame())

    def _reject(self, kind: str) -> None:
        if self.settings.server_detection and kind in ("start_speaking", "end_speaking"):
            self.error(*SERVER_FRAMES)
            return
        self.error(*SESSION.refusals.get((self.state, kind), NO_SEGMENT))

    # -- conditions and capture ---------------------------------------------

    def segment_open(self, event: EventData) -> bool:
        return self.capture.is_open

    def server_detection(self, event: EventData) -> bool:
        return self.settings.server_detection

    def turn_queued(self, event: EventData) -> bool:
        return self._turns.queued is not None

    def request_goes_on(self, event: EventData) -> bool:
        """New speech continues the running voice turn's request: its reply is unheard, or the
        user resumed within ``continue_ms`` of the end of its speech and no tool has acted."""
        segment, turn, held = self._voice_segment, self._turn, self._held
        if segment is None or self._closing:
            return False
        if held is None and (turn is None or turn.unheard):
            return True
        acted = bool(held[1].tools) if held is not None else turn is not None and turn.acted
        pause = None if segment.voiced_ms is None else event.kwargs["start_ms"] - segment.voiced_ms
        return not acted and pause is not None and 0 <= pause <= self.settings.continue_ms

    def _open_segment(self, event: EventData) -> None:
        self.capture.open(event.kwargs["stamp"])

    def _append_audio(self, event: EventData) -> None:
        self.capture.append(event.kwargs["pcm"])

    def _detect(self, event: EventData) -> None:
        self.capture.feed(event.kwargs["pcm"])

    def _hear(self, event: EventData) -> None:
        self.capture.hear(event.kwargs["pcm"], event.kwargs["start_ms"])

    def _take_back(self, event: EventData) -> None:
        """The user goes on: the running turn's audio starts the utterance now heard."""
        assert self._voice_segment is not None
        self.capture.carry(self._voice_segment)
        self._hear(event)

    def _announce_stop(self, event: EventData) -> None:
        self.capture.announce_stop(event.kwargs["end_ms"])

    def _discard_utterance(self, event: EventData) -> None:
        """Speech ended where it cannot become a turn (one is already waiting, or it was too long)."""
        self._announce_stop(event)
        if self.capture.is_open:
            self.capture.drop()

    def _check_stamp(self, event: EventData) -> None:
        expected = self.capture.stamp
        if expected is not None and event.kwargs["stamp"] != expected:
            raise FrameError(ErrorCode.STAMP_MISMATCH, f"end_speaking stamp does not match {expected!r}")

    # -- turns ---------------------------------------------------------------

    def _begin_text_turn(self, event: EventData) -> None:
        self._text_turn(event.kwargs["text"], self._clock.seconds())

    def _begin_voice_turn(self, event: EventData) -> None:
        self._voice_turn(self.capture.take(), self._clock.seconds())

    def _queue_text_turn(self, event: EventData) -> None:
        self._turns.queue(partial(self._text_turn, event.kwargs["text"], self._clock.seconds()))

    def _queue_voice_turn(self, event: EventData) -> None:
        if self._turns.queued is not None:
            raise FrameError(*BUSY)  # before the capture's segment is taken
        self._turns.queue(partial(self._voice_turn, self.capture.take(), self._clock.seconds()))

    def _begin_queued_turn(self, event: EventData) -> None:
        self._turns.start_queued()

    def _text_turn(self, text: str, started: float) -> None:
        self._voice_segment = None  # speech over a typed request is a barge-in, always
        self._turns.begin("text", started)
        self._reply_to(text, started)

    def _voice_turn(self, segment: Segment, began: float) -> None:
        wav = segment.wav()
        assembled = self._clock.seconds()
        if self._engines.keep_audio is not None:
            self._engines.keep_audio(self.username, wav)
        self._turns.begin("audio", assembled, assembled - began)
        if segment.voiced_at is not None and segment.stopped_at is not None:
            self._report.speech_ended(assembled - segment.voiced_at, assembled - segment.stopped_at)
        self._voice_segment = segment
        stt = self._engines.stt
        if stt is None:
            self.error(ErrorCode.STT_UNAVAILABLE, "speech-to-text is not configured", self._turns.emit)
            self._end_without_reply(Outcome.FAILED)
            return
        self._report.provider_called("stt", stt.name)
        # A call that raises takes the failure path too: error, ``end``, idle again.
        self._preparing = segment.transcript(stt, wav)
        self._preparing.addCallbacks(self._transcribed, self._stt_failed, callbackArgs=(assembled, stt.name))

    def _transcribed(self, text: str, assembled: float, stt: str) -> None:
        self._preparing = None
        self._report.provider_timing("stt", stt, None, self._clock.seconds() - assembled)
        text = text.strip()
        if not text:
            self._turns.emit(frames.no_speech(frames.timestamp(self._clock.seconds())))
            self._end_without_reply(Outcome.OK)
        else:
            self._reply_to(text, assembled)

    def _stt_failed(self, failure: Failure) -> None:
        self._preparing = None
        if failure.check(CancelledError):
            return  # interrupted or closed: the cancellation is ours
        _log.failure("Speech-to-text failed", failure)
        self._turns.emit(frames.error(*report_failure(failure, ErrorCode.INTERNAL_ERROR, self._report)))
        self._end_without_reply(Outcome.FAILED)

    def _end_without_reply(self, outcome: Outcome) -> None:
        self._turns.ended(outcome)
        self._end_turn()

    def _end_turn(self) -> None:
        """The turn is over and kept: say so (``end``), and take the next."""
        self.fire("turn_done")
        self._turns.emit({"t": "end"})
        self._turns.release()

    def _reply_to(self, text: str, started: float) -> None:
        now = self._clock.seconds()
        self._turns.emit({"t": "user_msg", "data": {"text": text, "ts": frames.timestamp(now)}})
        self._report.transcribed(now - started)
        loading = self._conversation.loading
        if loading is None:
            self._start_turn(text, started)
            return
        # The stored history is still loading (first turn after connecting).
        waiter = waiter_for(loading)
        waiter.addCallbacks(lambda _: self._start_turn(text, started), _cancelled)
        self._preparing = waiter

    def _start_turn(self, text: str, started: float) -> None:
        self._preparing = None
        engines = self._engines
        turn = Turn(
            clock=self._clock,
            llm=taken_by(engines.llm, self._voice_segment),
            tts=engines.tts,
            emit=self._turns.emit,
            messages=self._conversation.context(engines.system_prompt, text),
            started_at=started,
            tts_concurrency=engines.tts_concurrency,
            binary_audio=self.settings.binary_audio,
            listener=self._report,
        )
        self._turn = turn
        if self._output_paused:
            turn.pause()
        turn.start().addCallback(self._turn_over, text)

    def _turn_over(self, result: TurnResult, text: str) -> None:
        """Store the turn (both sides at once), then end it: ``end``, or the end of ``interrupted``."""
        self._turn = None
        if self._withdrawn:
            self._unwithdrawn()
            return
        left = self._window_left()
        if left > 0 and not (result.interrupted or self._closed or self._closing):
            self._held = (self._clock.callLater(left, self._settle, result, text), result, text)
            return
        self._settle(result, text)

    def _window_left(self) -> float:
        """Seconds until speech that would still continue the running voice turn's request can no
        longer be heard: ``continue_ms`` after its speech ended, plus the detector's ``min_speech_ms``."""
        segment = self._voice_segment
        if segment is None or segment.voiced_at is None:
            return 0.0
        window = (self.settings.continue_ms + self.settings.min_speech_ms) / 1000
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
        self._voice_segment = None
        outcome = Outcome.INTERRUPTED if result.interrupted else Outcome.FAILED if result.failed else Outcome.OK
        self._turns.ended(Outcome.DROPPED if self._closed or self._closing else outcome)
        stored = self._keep(text, result, outcome)
        if self._closed:
            stored.addBoth(lambda _: self._turns.release())
        elif result.interrupted:
            stored.addBoth(lambda _: self._unwound())
        else:
            self._storing = True
            stored.addBoth(lambda _: self._stored())

    def _stored(self) -> None:
        """A finished reply is stored: ``end`` it, unless an interrupt came meanwhile (then unwind)."""
        self._storing = False
        if self.state == "interrupted":
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
        self._turns.release()
        self._safely("unwound", lambda: self.fire("unwound"))

    def _stop_turn(self, event: EventData) -> None:
        """Barge-in: silence the turn and tell the client to stop playing, then unwind.

        ``stop_play`` goes out at once; the state stays ``interrupted`` until
        what was said of the reply is stored.
        """
        if self._turn is not None:
            self._turn.silence()  # a cancelled tool call's tool_result goes before stop_play
        self._turns.emit({"t": "stop_play"})
        if self._held is not None:
            self._settle_held()  # a complete reply: :meth:`_stored` unwinds once it is kept
            return
        if self._turn is not None:
            self._turn.interrupt()  # its result comes back through _turn_over
            return
        if self._storing:
            return  # the reply is complete; :meth:`_stored` unwinds once it is kept
        if self._preparing is not None:
            self._preparing.cancel()
        self._turns.ended(Outcome.DROPPED if self._closing else Outcome.INTERRUPTED)
        self._unwound()

    def _withdraw(self, event: EventData) -> None:
        """The user went on with the request: drop the turn unstored, unreported and unsaid (no
        ``end``; ``stop_play`` only if its audio had started); its number goes to the rest of the request."""
        self._withdrawn = True
        self._voice_segment = None
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
            self._turn.interrupt()  # its result comes back through _turn_over, which keeps nothing
            return
        if self._preparing is not None:
            self._preparing.cancel()
        self._unwithdrawn()

    def _unwithdrawn(self) -> None:
        self._withdrawn = False
        self._turns.withdraw()
        self._unwound()

    def _truncate(self, event: EventData) -> None:
        self._emit(self._conversation.truncate(event.kwargs["turn"], event.kwargs["audio_end_ms"]))


def _detection(settings: Settings) -> tuple[Any, ...]:
    """The settings that shape the voice detector; changing one restarts it."""
    return (settings.turn_detection, settings.vad_aggressiveness, settings.min_speech_ms,
            settings.silence_ms, settings.preroll_ms, settings.end_of_turn, settings.eagerness)


def _discard(frame: Frame | bytes) -> None:
    """Where frames go once the connection has closed."""


def _cancelled(failure: Failure) -> None:
    failure.trap(CancelledError)
