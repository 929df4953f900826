"""One live-mode conversation: a state machine fed by client frames.

This module knows nothing about sockets. The protocol layer hands it decoded
frames and a function to send frames back; everything in between — which
frame is allowed when, capturing audio, running turns, barge-in, the history
the model sees — happens here, so it can be tested with a fake clock.

The capture segment is orthogonal to the turn: a client may start speaking
while the bot is still answering (that is how barge-in begins), so a segment
can be open in ``processing`` and ``interrupted`` too. ``capturing`` means "a
segment is open and no turn runs".
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from typing import Any, Callable, cast

from transitions import EventData, Machine, MachineError
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.audio import BYTES_PER_SECOND, SAMPLE_WIDTH, to_wav
from livetx.deferreds import waiter_for
from livetx.domain import Engines, Exchange, Memory
from livetx.errors import ErrorCode
from livetx.live import frames
from livetx.live.frames import Frame, FrameError
from livetx.live.settings import Settings, updated
from livetx.live.turn import Emit, Turn, TurnResult, describe_failure
from livetx.live.vad import VoiceDetector
from livetx.providers.base import Message, PartialRecognizer

_log = Logger()

STATES = ["idle", "capturing", "processing", "interrupted"]

_NO_TURN = ["idle", "capturing"]
_TURN = ["processing", "interrupted"]

# The whole protocol in one table. ``dest: None`` is an internal transition:
# the event is accepted and its callback runs, but the state stays.
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "text_input", "source": _NO_TURN + ["interrupted"], "dest": "processing",
     "after": "_begin_text_turn"},
    {"trigger": "start_speaking", "source": _NO_TURN, "dest": "capturing",
     "unless": "server_detection", "after": "_open_segment"},
    {"trigger": "start_speaking", "source": _TURN, "dest": None,
     "unless": "server_detection", "after": "_open_segment"},
    # Talk mode: the stream goes to the voice detector, whatever the state.
    {"trigger": "speaking_part", "source": STATES, "dest": None,
     "conditions": "server_detection", "after": "_detect"},
    {"trigger": "speaking_part", "source": "capturing", "dest": None, "after": "_append_audio"},
    {"trigger": "speaking_part", "source": _TURN, "dest": None,
     "conditions": "segment_open", "after": "_append_audio"},
    {"trigger": "end_speaking", "source": "capturing", "dest": "processing",
     "unless": "server_detection", "before": "_check_stamp", "after": "_begin_voice_turn"},
    {"trigger": "end_speaking", "source": "interrupted", "dest": "processing",
     "conditions": "segment_open", "unless": "server_detection",
     "before": "_check_stamp", "after": "_begin_voice_turn"},
    {"trigger": "interrupt", "source": "processing", "dest": "interrupted", "after": "_stop_turn"},
    {"trigger": "interrupt", "source": _NO_TURN + ["interrupted"], "dest": None},
    {"trigger": "segment_dropped", "source": "capturing", "dest": "idle"},
    {"trigger": "segment_dropped", "source": _TURN, "dest": None},
    {"trigger": "turn_done", "source": "processing", "dest": "capturing",
     "conditions": "segment_open"},
    {"trigger": "turn_done", "source": "processing", "dest": "idle"},
    {"trigger": "unwound", "source": "interrupted", "dest": "capturing",
     "conditions": "segment_open"},
    {"trigger": "unwound", "source": "interrupted", "dest": "idle"},
    # Extensions (docs/protocol-extensions.md): accepted in every state.
    {"trigger": "session_update", "source": STATES, "dest": None, "after": "_update_settings"},
    {"trigger": "truncate", "source": STATES, "dest": None, "after": "_truncate"},
    # The voice detector's events. Speech during a turn interrupts it as
    # ``interrupt`` does, with the new utterance's segment already open.
    {"trigger": "speech_started", "source": _NO_TURN, "dest": "capturing",
     "after": "_open_detected_segment"},
    {"trigger": "speech_started", "source": "processing", "dest": "interrupted",
     "before": "_open_detected_segment", "after": "_stop_turn"},
    {"trigger": "speech_started", "source": "interrupted", "dest": None,
     "after": "_open_detected_segment"},
    {"trigger": "speech_stopped", "source": "capturing", "dest": "processing",
     "conditions": "segment_open", "before": "_announce_stop", "after": "_begin_voice_turn"},
    {"trigger": "speech_stopped", "source": STATES, "dest": None, "after": "_discard_utterance"},
]

#: Client frame types; the other triggers are the session's own.
CLIENT_EVENTS = (
    "text_input", "start_speaking", "speaking_part", "end_speaking", "interrupt", "session_update",
    "truncate",
)

_BUSY = (ErrorCode.PROCESSING_ERROR, "Session is busy")
_NO_SEGMENT = (ErrorCode.INVALID_STATE, "no voice segment is open; send start_speaking first")
_SERVER_FRAMES = (
    ErrorCode.INVALID_STATE,
    "turn_detection is server: send only speaking_part, or switch back with session_update",
)

#: Why a client event is refused in a state (anything else refused is _NO_SEGMENT).
REJECTIONS: dict[tuple[str, str], tuple[ErrorCode, str]] = {
    ("processing", "text_input"): _BUSY,
    ("processing", "end_speaking"): _BUSY,
}


#: Talk mode: audio between two partial transcripts of an utterance, at least.
#: Each partial decodes the whole utterance so far, so the gap also grows with
#: it (a quarter of what was heard): all the partials of an utterance then
#: cost a few times its final decode, not its length squared.
PARTIAL_EVERY_BYTES = BYTES_PER_SECOND // 2


class Segment:
    """The PCM of one utterance, capped so a stuck client cannot grow it forever."""

    __slots__ = ("stamp", "pcm", "heard", "partial")

    def __init__(self, stamp: str | None) -> None:
        self.stamp = stamp
        self.pcm = bytearray()
        #: Talk mode: how much audio the last partial transcript covered, and its text.
        self.heard = 0
        self.partial = ""

    def wav(self) -> bytes:
        return to_wav(self.pcm)


def _stamp(frame: Frame, required: bool) -> dict[str, Any]:
    stamp = frame.get("stamp")
    if stamp is None and not required:
        return {"stamp": None}
    if not isinstance(stamp, str) or not stamp:
        raise FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, "field 'stamp' must be a non-empty string")
    return {"stamp": stamp}


def _audio(frame: Frame) -> dict[str, Any]:
    data = frame.get("data")
    if not isinstance(data, str):
        raise FrameError(ErrorCode.INVALID_AUDIO, "field 'data' must be Base64 text")
    try:
        pcm = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise FrameError(ErrorCode.INVALID_AUDIO, "field 'data' is not valid Base64") from None
    return _pcm(pcm)


def _pcm(pcm: bytes) -> dict[str, Any]:
    if len(pcm) % SAMPLE_WIDTH:
        raise FrameError(ErrorCode.INVALID_AUDIO, "audio must be 16-bit PCM: odd number of bytes")
    return {"pcm": pcm}


def _truncation(frame: Frame) -> dict[str, Any]:
    turn, end = frame.get("turn"), frame.get("audio_end_ms")
    if isinstance(turn, bool) or not isinstance(turn, int):
        raise FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, "field 'turn' must be a turn id (an integer)")
    if isinstance(end, bool) or not isinstance(end, (int, float)) or not 0 <= end < float("inf"):
        raise FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, "field 'audio_end_ms' must be a number of ms, 0 or more")
    return {"turn": turn, "audio_end_ms": end}


#: Field checks per client frame; they run before the state machine sees it.
PARSERS: dict[str, Callable[[Frame], dict[str, Any]]] = {
    "text_input": lambda f: {"text": frames.text_field(f, "text", "message")},
    "start_speaking": lambda f: _stamp(f, required=False),
    "speaking_part": _audio,
    "end_speaking": lambda f: _stamp(f, required=True),
    "interrupt": lambda f: {},
    "session_update": lambda f: {"frame": f},
    "truncate": _truncation,
}


def build_machine(cls: type[Machine] = Machine, **options: Any) -> Machine:
    """Compile the table into a ``transitions`` machine (``cls`` may add diagrams)."""
    return cls(
        model=None,
        states=STATES,
        transitions=TRANSITIONS,
        initial="idle",
        auto_transitions=False,
        send_event=True,
        **options,
    )


#: The table, compiled once. Each session is a model of it with its own
#: ``state``; events are fired with ``Event.trigger(session)``, so the machine
#: binds nothing onto a session and keeps no reference to it: a connection
#: costs one attribute, not a machine (benchmarks/RESULTS.md says how much).
MACHINE = build_machine()


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
    ) -> None:
        self.username = username
        self._engines = engines
        self._clock = clock
        self._emit = emit
        self._history: deque[Exchange] = deque(maxlen=max(0, engines.history_turns))
        self._segment: Segment | None = None
        self._turn: Turn | None = None
        #: The client reads slower than we write (see :meth:`pause_output`).
        self._output_paused = False
        #: What a turn waits for before the model starts: a transcript, or the
        #: stored history of the conversation. Interrupting cancels it.
        self._preparing: Deferred[Any] | None = None
        self._max_segment_bytes = int(engines.max_segment_seconds * BYTES_PER_SECOND)
        self._metrics: dict[str, Any] = {}
        #: The last turn's id; every frame of a turn carries it as ``turn``.
        self._turn_id = 0
        self._turn_emit: Emit = emit
        self.settings = Settings()
        self._detector: VoiceDetector | None = None
        self._partial: Deferred[str] | None = None
        #: The last finished turn that was kept: its id, what it sent, what is remembered.
        self._finished: tuple[int, TurnResult, Exchange] | None = None
        self._memory = memory
        self._recalled: Deferred[None] | None = None
        if memory is not None and self._history.maxlen:
            # Not ``.called``: a Deferred is "called" while still paused on the query.
            self._recalled = memory.recall(self._history.maxlen).addCallbacks(
                self._restore, self._recall_failed
            )
            self._recalled.addBoth(self._recall_finished)
        self.state: str = cast(str, MACHINE.initial)

    @property
    def history(self) -> tuple[Exchange, ...]:
        return tuple(self._history)

    # -- input -------------------------------------------------------------

    def receive(self, frame: Frame) -> None:
        """Handle one decoded client frame; never raises."""
        kind = frame["t"]
        parse = PARSERS.get(kind)
        if parse is None:
            self._emit(frames.error(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"unknown message type {kind!r}"))
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
            self._emit(e.frame())
        except Exception:
            _log.failure("Bug while handling a {kind!r} event", kind=kind)
            self._emit(frames.error(ErrorCode.INTERNAL_ERROR, "internal error"))

    def receive_audio(self, pcm: bytes) -> None:
        """A binary message: raw PCM, taken as a ``speaking_part`` (binary audio transport)."""
        self._safely("speaking_part", lambda: self.fire("speaking_part", **_pcm(pcm)))

    def fire(self, event: str, **kwargs: Any) -> bool:
        """Run ``event`` through the machine; False when a condition refused it."""
        return bool(MACHINE.events[event].trigger(self, **kwargs))

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
        """The connection is gone: stop all work and send nothing more."""
        self._emit = _discard
        self.stop_listening()
        if self._turn is not None:
            self._turn.interrupt()
        if self._preparing is not None:
            self._preparing.cancel()

    def _new_turn(self) -> None:
        """Number the turn that starts now and tag its frames with the number."""
        self._turn_id += 1
        turn_id = self._turn_id

        def emit(frame: Frame | bytes) -> None:
            self._emit(frame if isinstance(frame, bytes) else {**frame, "turn": turn_id})

        self._turn_emit = emit

    def _update_settings(self, event: EventData) -> None:
        before, self.settings = self.settings, updated(self.settings, event.kwargs["frame"])
        if _detection(before) != _detection(self.settings):
            self._restart_detection()
        self._emit(self.settings.frame())

    def _restart_detection(self) -> None:
        """Turn detection changed hands: an utterance half-heard is dropped."""
        self.stop_listening()
        if self.settings.server_detection:
            self._detector = VoiceDetector(self.settings, self._clock, self)

    def stop_listening(self) -> None:
        """Drop an utterance half-heard and detect no more (the server is stopping).

        Without this a talk-mode detector would end the utterance on its own
        timer and start a turn while the server waits for turns to finish.
        """
        if self._detector is not None:
            self._detector.close()
            self._detector = None
        self._cancel_partial()
        if self._segment is not None:
            self._segment = None
            self.fire("segment_dropped")

    def _reject(self, kind: str) -> None:
        if self.settings.server_detection and kind in ("start_speaking", "end_speaking"):
            self._emit(frames.error(*_SERVER_FRAMES))
            return
        self._emit(frames.error(*REJECTIONS.get((self.state, kind), _NO_SEGMENT)))

    # -- conditions and capture ---------------------------------------------

    def segment_open(self, event: EventData) -> bool:
        return self._segment is not None

    def server_detection(self, event: EventData) -> bool:
        return self.settings.server_detection

    def _open_segment(self, event: EventData) -> None:
        self._segment = Segment(event.kwargs["stamp"])

    def _append_audio(self, event: EventData) -> None:
        self._append(event.kwargs["pcm"])

    def _append(self, pcm: bytes) -> None:
        segment = self._segment
        assert segment is not None
        if len(segment.pcm) + len(pcm) <= self._max_segment_bytes:
            segment.pcm += pcm
        else:  # refuse before copying: the cap bounds memory, not just turns
            self._segment = None
            self.fire("segment_dropped")
            raise FrameError(
                ErrorCode.AUDIO_TOO_LONG,
                f"voice segment longer than {self._engines.max_segment_seconds:g} s; dropped",
            )

    # -- server-side turn detection (talk mode) -------------------------------

    def _detect(self, event: EventData) -> None:
        if self._detector is not None:  # None once the server stops listening
            self._detector.feed(event.kwargs["pcm"])

    def speech_started(self, pcm: bytes, start_ms: int) -> None:
        """The detector heard speech begin (it calls this mid-``feed``)."""
        self._safely("speech_started", lambda: self.fire("speech_started", pcm=pcm, start_ms=start_ms))

    def speech_audio(self, pcm: bytes) -> None:
        if self._segment is not None:  # none after a segment too long was dropped
            self._safely("speaking_part", lambda: self._append(pcm))
            self._request_partial()

    def speech_stopped(self, end_ms: int) -> None:
        """The detector heard enough silence, or the stream stalled (then from the clock)."""
        self._safely("speech_stopped", lambda: self.fire("speech_stopped", end_ms=end_ms))

    def _open_detected_segment(self, event: EventData) -> None:
        self._emit({"t": "speech_started", "data": {"audio_start_ms": event.kwargs["start_ms"]}})
        self._segment = Segment(None)
        self._append(event.kwargs["pcm"])

    def _announce_stop(self, event: EventData) -> None:
        self._cancel_partial()  # the final transcript must not queue behind it
        self._emit({"t": "speech_stopped", "data": {"audio_end_ms": event.kwargs["end_ms"]}})

    def _request_partial(self) -> None:
        """Transcribe the utterance so far, if the engine can, one request at a time."""
        stt, segment = self._engines.stt, self._segment
        if (segment is None or self._partial is not None or not isinstance(stt, PartialRecognizer)
                or len(segment.pcm) - segment.heard < max(PARTIAL_EVERY_BYTES, segment.heard // 4)):
            return
        segment.heard = len(segment.pcm)
        self._partial = maybeDeferred(stt.partial, bytes(segment.pcm))
        self._partial.addCallbacks(self._partial_heard, self._partial_failed, callbackArgs=(segment,))

    def _partial_heard(self, text: str, segment: Segment) -> None:
        self._partial = None
        text = text.strip()
        if segment is self._segment and text and text != segment.partial:
            segment.partial = text
            self._emit({"t": "user_partial", "data": {"text": text}})
        self._request_partial()  # audio may have piled up meanwhile

    def _partial_failed(self, failure: Failure) -> None:
        self._partial = None
        if not failure.check(CancelledError):
            _log.failure("Partial transcription failed", failure)

    def _cancel_partial(self) -> None:
        if self._partial is not None:
            self._partial.cancel()

    def _discard_utterance(self, event: EventData) -> None:
        """Speech ended where it cannot become a turn (a typed turn runs, or it was too long)."""
        self._announce_stop(event)
        self._segment = None

    def _check_stamp(self, event: EventData) -> None:
        assert self._segment is not None
        expected = self._segment.stamp
        if expected is not None and event.kwargs["stamp"] != expected:
            raise FrameError(ErrorCode.STAMP_MISMATCH, f"end_speaking stamp does not match {expected!r}")

    # -- turns ---------------------------------------------------------------

    def _metric(self, **values: Any) -> None:
        self._metrics.update(values)
        self._turn_emit({"t": "metrics", "data": values})

    def _begin_text_turn(self, event: EventData) -> None:
        started = self._clock.seconds()
        self._new_turn()
        self._metrics = {}
        self._metric(input_type="text")
        self._reply_to(event.kwargs["text"], started)

    def _begin_voice_turn(self, event: EventData) -> None:
        segment, self._segment = self._segment, None
        assert segment is not None
        began = self._clock.seconds()
        self._new_turn()
        wav = segment.wav()
        assembled = self._clock.seconds()
        if self._engines.keep_audio is not None:
            self._engines.keep_audio(self.username, wav)
        self._metrics = {}
        self._metric(wav_assemble_time=assembled - began, input_type="audio")
        stt = self._engines.stt
        if stt is None:
            self._turn_emit(frames.error(ErrorCode.STT_UNAVAILABLE, "speech-to-text is not configured"))
            self._end_without_reply()
            return
        self._metric(stt=stt.name)
        # A call that raises takes the failure path too: error, ``end``, idle again.
        self._preparing = maybeDeferred(stt.transcribe, wav)
        self._preparing.addCallbacks(self._transcribed, self._stt_failed, callbackArgs=(assembled,))

    def _transcribed(self, text: str, assembled: float) -> None:
        self._preparing = None
        text = text.strip()
        if not text:
            self._end_without_reply()
        else:
            self._reply_to(text, assembled)

    def _stt_failed(self, failure: Failure) -> None:
        self._preparing = None
        if failure.check(CancelledError):
            return  # interrupted or closed: the cancellation is ours
        _log.failure("Speech-to-text failed", failure)
        self._turn_emit(frames.error(*describe_failure(failure, ErrorCode.INTERNAL_ERROR)))
        self._end_without_reply()

    def _end_without_reply(self) -> None:
        self._turn_emit({"t": "end"})
        self.fire("turn_done")

    def _reply_to(self, text: str, started: float) -> None:
        self._turn_emit({"t": "user_msg", "data": {"text": text, "ts": frames.timestamp(self._clock.seconds())}})
        if self._recalled is None:
            self._start_turn(text, started)
            return
        # The stored history is still loading (first turn after connecting).
        waiter = waiter_for(self._recalled)
        waiter.addCallbacks(lambda _: self._start_turn(text, started), _cancelled)
        self._preparing = waiter

    def _start_turn(self, text: str, started: float) -> None:
        self._preparing = None
        engines = self._engines
        turn = Turn(
            clock=self._clock,
            llm=engines.llm,
            tts=engines.tts,
            emit=self._turn_emit,
            messages=self._context(text),
            started_at=started,
            tts_concurrency=engines.tts_concurrency,
            binary_audio=self.settings.binary_audio,
        )
        self._turn = turn
        if self._output_paused:
            turn.pause()
        turn.start().addCallback(self._turn_over, text)

    def _turn_over(self, result: TurnResult, text: str) -> None:
        turn, self._turn = self._turn, None
        if result.reply or not result.failed:
            exchange = Exchange(text, result.reply, result.interrupted)
            self._history.append(exchange)
            self._finished = (self._turn_id, result, exchange)
            if self._memory is not None and turn is not None:
                metrics = {**self._metrics, **turn.metrics}
                self._memory.remember(exchange, metrics.get("input_type", "text"), metrics)
        if not result.interrupted:
            self.fire("turn_done")

    def _stop_turn(self, event: EventData) -> None:
        """Barge-in: silence the turn first, then tell the client to stop playing."""
        if self._turn is not None:
            self._turn.interrupt()
        elif self._preparing is not None:
            self._preparing.cancel()
        self._turn_emit({"t": "stop_play"})
        self.fire("unwound")

    def _truncate(self, event: EventData) -> None:
        """Keep only what the user heard of the last reply, for the store and the model."""
        turn_id, end_ms = event.kwargs["turn"], event.kwargs["audio_end_ms"]
        if self._finished is None or self._finished[0] != turn_id:
            raise FrameError(ErrorCode.UNKNOWN_TURN, f"turn {turn_id} is not the last finished turn")
        _, result, kept = self._finished
        if not result.spoken:
            raise FrameError(ErrorCode.UNKNOWN_TURN, f"turn {turn_id} sent no audio to cut")
        if any(duration is None for _, duration in result.spoken):
            # Not WAV ([tts] response_format mp3, opus…): where the audio ended is unknown.
            raise FrameError(ErrorCode.UNKNOWN_TURN, f"turn {turn_id} sent audio of unknown length; cannot cut it")
        revised = Exchange(kept.user, result.heard(end_ms), interrupted=True)
        if revised != kept:
            if self._history and self._history[-1] is kept:
                self._history[-1] = revised
            if self._memory is not None:
                self._memory.revise(revised)
            self._finished = (turn_id, result, revised)
        self._emit({"t": "truncated", "turn": turn_id, "data": {"audio_end_ms": end_ms, "text": revised.reply}})

    def _restore(self, exchanges: list[Exchange]) -> None:
        # Turns finished while loading are newer than anything stored.
        newer = list(self._history)
        self._history.clear()
        self._history.extend([*exchanges, *newer])

    def _recall_finished(self, _: None) -> None:
        self._recalled = None

    def _recall_failed(self, failure: Failure) -> None:
        _log.failure("Could not load the stored conversation of {user}", failure, user=self.username)

    def _context(self, text: str) -> list[Message]:
        messages: list[Message] = []
        if self._engines.system_prompt:
            messages.append({"role": "system", "content": self._engines.system_prompt})
        for exchange in self._history:
            messages.append({"role": "user", "content": exchange.user})
            if exchange.reply:
                messages.append({"role": "assistant", "content": exchange.reply})
        messages.append({"role": "user", "content": text})
        return messages


def _detection(settings: Settings) -> tuple[Any, ...]:
    """The settings that shape the voice detector; changing one restarts it."""
    return (settings.turn_detection, settings.vad_aggressiveness, settings.min_speech_ms,
            settings.silence_ms, settings.preroll_ms)


def _discard(frame: Frame | bytes) -> None:
    """Where frames go once the connection has closed."""


def _cancelled(failure: Failure) -> None:
    failure.trap(CancelledError)
