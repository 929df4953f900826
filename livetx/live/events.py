"""What happens to a turn, told directly to whoever cares.

A turn calls a :class:`TurnListener` at each step of its life instead of
anyone rebuilding that life from the frames it sent. The per-turn
``metrics`` frames (:class:`MetricsFrames`), the Prometheus counters and the
one log line per turn (:class:`livetx.metrics.TurnObserver`) are listeners;
a turn whose model calls tools (:mod:`livetx.tools`) reports each call with
:meth:`TurnListener.tool_called` and :meth:`TurnListener.tool_finished`.
Live turns and chat turns (on a socket or over SSE) tell the same events.
Whoever sends an error frame says so (:meth:`TurnListener.error_sent`), and
whoever meets a provider's failure names its kind
(:meth:`TurnListener.provider_failed`): nobody reads the frames back.

Times are seconds from the turn's start, as the session defines it (the
text frame's arrival, or the voice segment assembled into a WAV). A talk-mode
turn also says when its speech ended (:meth:`TurnListener.speech_ended`), and
:class:`MetricsFrames` reports its stages from there: what the user feels.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

from twisted.logger import Logger

# How a turn ended is one of the errors module's vocabularies; importable from here too.
from livetx.errors import Outcome as Outcome
from livetx.live.frames import Frame
from livetx.tools.record import tool_figures

_log = Logger()


class TurnListener(Protocol):
    """One method per event of a turn; none may raise into the turn."""

    def turn_started(self, turn_id: int, input_type: str, assemble_seconds: float | None) -> None:
        """A turn began; ``assemble_seconds`` is the WAV assembly of a voice turn."""

    def speech_ended(self, voice_end: float, endpoint: float) -> None:
        """Talk mode: the turn's last voiced frame was heard ``voice_end`` seconds before
        it started, and the detector declared the utterance over ``endpoint`` seconds before."""

    def transcribed(self, seconds: float) -> None:
        """The user's words went out (``user_msg``)."""

    def provider_called(self, kind: str, provider: str) -> None:
        """A provider (``stt``, ``llm``, ``tts``) was asked for work for this turn."""

    def provider_timing(self, kind: str, provider: str, first: float | None, total: float) -> None:
        """A provider's part is over: to its first token or audio (if any), and in all."""

    def first_delta(self, seconds: float) -> None:
        """The first text of the reply went out."""

    def first_audio(self, seconds: float) -> None:
        """The first audio of the reply went out."""

    def audio_sent(self, audio: bytes) -> None:
        """An audio file of the reply went out (the client plays them back to back)."""

    def tool_called(self, call_id: str, name: str) -> None:
        """The model asked for a tool, and the call starts."""

    def tool_finished(self, call_id: str, name: str, ok: bool, status: str, seconds: float) -> None:
        """A tool call returned (``ok``) or not: ``status`` is ``ok``, ``failed``, ``refused``,
        ``timeout`` or ``cancelled``; ``seconds`` is how long it ran."""

    def error_sent(self, code: str) -> None:
        """An error frame with ``code`` went out (in a turn or between turns)."""

    def provider_failed(self, kind: str) -> None:
        """A provider (``stt``, ``llm``, ``tts``, or ``provider``) failed, and the client was told."""

    def speculated(self, outcome: str) -> None:
        """Talk mode: a reply started at a pause (livetx.live.speculation) was ``committed``
        (its turn took it) or ``discarded`` (the user went on; nothing of it was sent)."""

    def turn_ended(self, outcome: Outcome, seconds: float, values: Mapping[str, Any]) -> None:
        """The turn is over; called once, before its ``end`` (live: or after ``stop_play``).

        ``values`` is what the turn's ``metrics`` say (chat: what is stored
        with the reply), a snapshot the listener may keep.
        """


class Listeners:
    """Several listeners as one, in order; a listener that raises is logged and skipped."""

    __slots__ = ("_all",)

    def __init__(self, *listeners: TurnListener) -> None:
        self._all = listeners

    def _each(self, method: str, *args: Any) -> None:
        for listener in self._all:
            try:
                getattr(listener, method)(*args)
            except Exception:
                _log.failure("Bug in a turn listener's {method}", method=method)

    def turn_started(self, turn_id: int, input_type: str, assemble_seconds: float | None) -> None:
        self._each("turn_started", turn_id, input_type, assemble_seconds)

    def speech_ended(self, voice_end: float, endpoint: float) -> None:
        self._each("speech_ended", voice_end, endpoint)

    def transcribed(self, seconds: float) -> None:
        self._each("transcribed", seconds)

    def provider_called(self, kind: str, provider: str) -> None:
        self._each("provider_called", kind, provider)

    def provider_timing(self, kind: str, provider: str, first: float | None, total: float) -> None:
        self._each("provider_timing", kind, provider, first, total)

    def first_delta(self, seconds: float) -> None:
        self._each("first_delta", seconds)

    def first_audio(self, seconds: float) -> None:
        self._each("first_audio", seconds)

    def audio_sent(self, audio: bytes) -> None:
        self._each("audio_sent", audio)

    def tool_called(self, call_id: str, name: str) -> None:
        self._each("tool_called", call_id, name)

    def tool_finished(self, call_id: str, name: str, ok: bool, status: str, seconds: float) -> None:
        self._each("tool_finished", call_id, name, ok, status, seconds)

    def error_sent(self, code: str) -> None:
        self._each("error_sent", code)

    def provider_failed(self, kind: str) -> None:
        self._each("provider_failed", kind)

    def speculated(self, outcome: str) -> None:
        self._each("speculated", outcome)

    def turn_ended(self, outcome: Outcome, seconds: float, values: Mapping[str, Any]) -> None:
        self._each("turn_ended", outcome, seconds, values)


class Ignore:
    """A listener that hears nothing: the default, and a base for partial listeners."""

    __slots__ = ()

    def turn_started(self, turn_id: int, input_type: str, assemble_seconds: float | None) -> None:
        pass

    def speech_ended(self, voice_end: float, endpoint: float) -> None:
        pass

    def transcribed(self, seconds: float) -> None:
        pass

    def provider_called(self, kind: str, provider: str) -> None:
        pass

    def provider_timing(self, kind: str, provider: str, first: float | None, total: float) -> None:
        pass

    def first_delta(self, seconds: float) -> None:
        pass

    def first_audio(self, seconds: float) -> None:
        pass

    def audio_sent(self, audio: bytes) -> None:
        pass

    def tool_called(self, call_id: str, name: str) -> None:
        pass

    def tool_finished(self, call_id: str, name: str, ok: bool, status: str, seconds: float) -> None:
        pass

    def error_sent(self, code: str) -> None:
        pass

    def provider_failed(self, kind: str) -> None:
        pass

    def speculated(self, outcome: str) -> None:
        pass

    def turn_ended(self, outcome: Outcome, seconds: float, values: Mapping[str, Any]) -> None:
        pass


#: The reference's ``metrics`` keys for a provider's timings: kind → (first, total, name).
TIMING_KEYS = {
    "llm": ("llm_ttft", "llm_total_time", "chat_model"),
    "tts": ("tts_first_frame_time", "tts_total_time", "tts"),
}


#: Speculative replies' outcomes (livetx.live.speculation) → the turn's ``metrics`` key counting them.
SPECULATION_KEYS = {"committed": "speculations_committed", "discarded": "speculations_discarded"}

#: A talk-mode turn's stages, each in ms from the user's last voiced frame, in the order they come.
VOICE_STAGES = ("endpoint_ms", "transcript_ms", "first_token_ms", "first_audio_ms", "voice_to_voice_ms")


class MetricsFrames(Ignore):
    """The reference's ``metrics`` frames, written from a turn's events.

    Wire order, chosen on purpose: every ``metrics`` frame of a turn goes
    before its ``end`` (the reference sent the last one after; its clients
    merge ``metrics`` whenever they come, so they take either order).
    ``values`` is everything reported for the current turn, which the
    store keeps with the reply and :meth:`ended` hands the other
    listeners. ``wav_to_tts_total_time`` is sent for turns that reached the model, as the reference does; the tool figures
    (:func:`livetx.tools.record.tool_figures`) for turns that called tools.

    A talk-mode turn gets one more frame, at its first audio (or its end, if
    it had none): the stages from the user's last voiced frame, in ms
    (:data:`VOICE_STAGES`; ``voice_to_voice_ms`` is the total, which the
    server sees at the first audio). With speculative replies
    (livetx.live.speculation), the turn's last ``metrics`` count those
    committed and discarded since the last turn that reported them
    (:data:`SPECULATION_KEYS`): a request's pauses come before its turn starts.
    """

    __slots__ = ("_emit", "values", "_replied", "_tools", "_voice", "_speculations")

    def __init__(self, emit: Callable[[Frame], None]) -> None:
        self._emit = emit
        self.values: dict[str, Any] = {}
        self._replied = False
        self._tools: list[tuple[str, bool, str, float]] = []
        #: Talk mode: each stage of the turn, in seconds from its last voiced frame.
        self._voice: dict[str, float] | None = None
        #: Speculative replies since the last turn that reported them, by outcome (kept across turns).
        self._speculations: dict[str, int] = {}

    def _send(self, data: dict[str, Any]) -> None:
        self.values.update(data)
        self._emit({"t": "metrics", "data": data})

    def turn_started(self, turn_id: int, input_type: str, assemble_seconds: float | None) -> None:
        self.values = {}
        self._replied = False
        self._tools = []
        self._voice = None
        if assemble_seconds is None:
            self._send({"input_type": input_type})
        else:
            self._send({"wav_assemble_time": assemble_seconds, "input_type": input_type})

    def provider_called(self, kind: str, provider: str) -> None:
        if kind == "stt":
            self._send({"stt": provider})
        elif kind == "llm":
            self._replied = True

    def provider_timing(self, kind: str, provider: str, first: float | None, total: float) -> None:
        keys = TIMING_KEYS.get(kind)
        if keys is not None:
            self._send({keys[0]: first or 0.0, keys[1]: total, keys[2]: provider})

    def speech_ended(self, voice_end: float, endpoint: float) -> None:
        self._voice = {"start": voice_end, "endpoint_ms": voice_end - endpoint}

    def transcribed(self, seconds: float) -> None:
        self._voice_stage("transcript_ms", seconds)

    def first_delta(self, seconds: float) -> None:
        self._voice_stage("first_token_ms", seconds)

    def first_audio(self, seconds: float) -> None:
        self._send({"speak_to_first_frame": seconds})
        if self._voice_stage("first_audio_ms", seconds):
            self._voice_stage("voice_to_voice_ms", seconds)
            self._send_voice()

    def _voice_stage(self, stage: str, seconds: float) -> bool:
        """Note a stage of a talk-mode turn (once); False for other turns."""
        if self._voice is None:
            return False
        self._voice.setdefault(stage, self._voice["start"] + seconds)
        return True

    def _send_voice(self) -> None:
        voice, self._voice = self._voice, None
        if voice is not None:
            self._send({stage: round(voice[stage] * 1000, 1) for stage in VOICE_STAGES if stage in voice})

    def tool_finished(self, call_id: str, name: str, ok: bool, status: str, seconds: float) -> None:
        self._tools.append((name, ok, status, seconds))

    def speculated(self, outcome: str) -> None:
        self._speculations[outcome] = self._speculations.get(outcome, 0) + 1

    def ended(self, outcome: Outcome, seconds: float) -> Mapping[str, Any]:
        """Send the turn's last ``metrics`` (before its ``end``); the values, for the turn's ``turn_ended``."""
        if outcome in (Outcome.OK, Outcome.FAILED):
            self._send_voice()  # a turn without audio: the stages it reached
        if self._tools and outcome in (Outcome.OK, Outcome.FAILED):
            self._send(tool_figures(self._tools))
        elif self._tools:  # stop_play has gone out: kept for the store, not sent
            self.values.update(tool_figures(self._tools))
        if self._speculations:
            counted = {key: self._speculations.get(ended, 0) for ended, key in SPECULATION_KEYS.items()}
            self._speculations = {}
            if outcome in (Outcome.OK, Outcome.FAILED):
                self._send(counted)
            else:
                self.values.update(counted)
        if self._replied and outcome in (Outcome.OK, Outcome.FAILED):
            self._send({"wav_to_tts_total_time": seconds})
        return dict(self.values)

