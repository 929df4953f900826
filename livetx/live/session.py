"""One live-mode conversation: a state machine fed by client frames.

This module knows nothing about sockets. The protocol layer hands it decoded
frames and a function to send frames back. The session is the protocol:
which frame is allowed when (the table in :mod:`livetx.live.rules`), and
which piece an accepted event goes to. The pieces, each with one job, are
wired in :meth:`LiveSession.__init__`, and all run on a fake clock in tests:

- :mod:`livetx.live.capture`: the user's voice (push to talk, and talk
  mode's detector);
- :mod:`livetx.live.prepare`: a turn's way to the model (its number, the
  transcript, ``user_msg``, the stored history);
- :mod:`livetx.live.request`: the request in progress, from the model's
  start until it is stored, stopped (barge-in) or withdrawn;
- :mod:`livetx.live.ledger`: the turns' numbers, timing and reporting;
- :mod:`livetx.live.history`: the earlier turns the model sees.

The states (:data:`SESSION`): ``idle``; ``capturing`` (a segment is open and
no turn runs); ``processing`` (a turn runs); ``interrupted`` (a turn was
stopped and is unwinding: its upstream calls are cancelled and
``stop_play`` is sent at once, and the state lasts until its partial reply
is stored). While ``interrupted`` every frame is taken; one that starts a
turn (``text_input``, ``end_speaking``, talk mode's end of speech) waits and
starts once the interrupted turn is unwound, and a second such frame gets
``PROCESSING_ERROR`` as in ``processing``.

Talk mode: speech soon after a voice request may continue it instead of
barging in (:mod:`livetx.live.request`; docs/protocol-extensions.md, "A
request in two breaths").
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from transitions import EventData, MachineError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from livetx.domain import Engines, Exchange, Memory
from livetx.errors import ErrorCode
from livetx.live import frames
from livetx.live.capture import Capture, Segment
from livetx.live.client_frames import PARSERS, pcm_fields
from livetx.live.events import Listeners, TurnListener
from livetx.live.frames import Frame, FrameError
from livetx.live.history import Conversation
from livetx.live.ledger import Emit, TurnLedger
from livetx.live.prepare import Preparation
from livetx.live.request import Request
from livetx.live.rules import BUSY, NO_SEGMENT, SERVER_FRAMES, SESSION
from livetx.live.settings import Settings, updated
from livetx.live.speculation import speculate

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
        self.settings = Settings(speculative=engines.speculative)
        # The wiring: each piece is handed what it works with.
        self.capture = Capture(self, clock, engines.stt, engines.max_segment_seconds, engines.turn_end)
        self._turns = TurnLedger(clock, self.emit, self.capture.echo if listener is None
                                 else Listeners(self.capture.echo, listener))
        self._conversation = Conversation(username, engines.history_turns, memory, engines.context_bytes)
        self._request = Request(self, clock, engines, self._turns, self._conversation)
        self._prepare = Preparation(clock, engines, username, self._turns, self._conversation, self._request)

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
        """The capture's and the request's events (their ``Owner``): a refusal becomes an error frame."""
        self._safely(event, lambda: self.fire(event, **kwargs))

    def emit(self, frame: Frame | bytes) -> None:
        self._emit(frame)

    def error(self, code: ErrorCode, message: str) -> None:
        """Send an error frame, and report it sent."""
        self._turns.report.error_sent(code)
        self._emit(frames.error(code, message))

    def pause_output(self) -> None:
        """The socket cannot take more for now: the running turn starts no more speech."""
        self._request.pause()

    def resume_output(self) -> None:
        self._request.resume()

    def close(self) -> None:
        """The connection is gone: stop all work and send nothing more (what was said is stored)."""
        self._emit = _discard
        self._turns.drop_queued()
        self.stop_listening()
        self._request.close()

    def stop(self) -> None:
        """The server stops: end a running turn as ``interrupt`` does; it is stored, marked interrupted."""
        self._request.closing = True
        self._turns.drop_queued()  # a turn asked for during an interrupt does not start now
        if self.state == "processing":
            self._safely("interrupt", lambda: self.fire("interrupt"))

    def stop_listening(self) -> None:
        """Drop an utterance half-heard and detect no more (the server is stopping)."""
        self.capture.stop_listening()

    def forget_speech(self) -> None:
        """Drop an utterance half-heard and listen afresh: what a board heard before its wake word is no question."""
        self.capture.restart_detection(self.settings)

    def paused(self, segment: Segment, text: str) -> None:
        """Talk mode heard a pause and transcribed it (the capture's ``Owner``): with ``speculative``
        and no turn running, the reply's model call starts now, unsent (livetx.live.speculation)."""
        if (self.settings.speculative and self.state == "capturing" and not self._request.closing
                and self._conversation.loading is None):
            messages = self._conversation.context(self._engines.system_prompt, text)
            segment.ahead = speculate(self._engines.llm, messages, self._turns.report)

    def _update_settings(self, event: EventData) -> None:
        tts = self._engines.tts
        before, self.settings = self.settings, updated(self.settings, event.kwargs["frame"], self._engines.turn_end,
                                                       tts.voices if tts is not None else None)
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
        """New speech continues the running voice turn's request (:meth:`Request.goes_on`)."""
        return self._request.goes_on(event.kwargs["start_ms"])

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
        assert self._request.segment is not None
        self.capture.carry(self._request.segment)
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
        self._prepare.text(event.kwargs["text"], self._clock.seconds())

    def _begin_voice_turn(self, event: EventData) -> None:
        self._prepare.voice(self.capture.take(), self._clock.seconds())

    def _queue_text_turn(self, event: EventData) -> None:
        self._turns.queue(partial(self._prepare.text, event.kwargs["text"], self._clock.seconds()))

    def _queue_voice_turn(self, event: EventData) -> None:
        if self._turns.queued is not None:
            raise FrameError(*BUSY)  # before the capture's segment is taken
        segment = self.capture.take()
        # A reply begun on its speech (speculative) is let go if the turn never starts.
        self._turns.queue(partial(self._prepare.voice, segment, self._clock.seconds()), dropped=segment.discard)

    def _begin_queued_turn(self, event: EventData) -> None:
        self._turns.start_queued()

    def _stop_turn(self, event: EventData) -> None:
        """Barge-in: ``stop_play`` at once; ``interrupted`` lasts until what was said is stored."""
        self._request.stop()

    def _withdraw(self, event: EventData) -> None:
        """The user went on with the request: its turn is dropped, and the rest answered with it."""
        self._request.withdraw()

    def _truncate(self, event: EventData) -> None:
        self._emit(self._conversation.truncate(event.kwargs["turn"], event.kwargs["audio_end_ms"]))


def _detection(settings: Settings) -> tuple[Any, ...]:
    """The settings that shape the voice detector; changing one restarts it."""
    return (settings.turn_detection, settings.vad_aggressiveness, settings.min_speech_ms,
            settings.silence_ms, settings.preroll_ms, settings.end_of_turn, settings.eagerness)


def _discard(frame: Frame | bytes) -> None:
    """Where frames go once the connection has closed."""
