"""One reply, as a pipeline of Deferreds: model → deltas → sentences → speech.

Every model delta is sent the moment it arrives. Each finished sentence is
handed to text-to-speech straight away, so synthesis overlaps with the model
still writing, and the audio is sent strictly in sentence order. Interrupting
cancels every outstanding Deferred (which closes upstream connections) and
silences the turn first, so nothing of it can reach the client afterwards.

A turn's states (:data:`TURN`): ``streaming`` while the model writes,
``speaking`` while the last sentences' audio is made, then one of
``finished``, ``failed`` or ``interrupted``. Only a running turn sends
anything. What happens to it is told to a
:class:`livetx.live.events.TurnListener` as it happens; the session sends
``end`` once the turn is stored.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from livetx.audio import audio_format, duration_ms
from livetx.deferreds import waiter_for
from livetx.errors import ErrorCode, describe_failure
from livetx.live import frames
from livetx.live.events import Ignore, TurnListener
from livetx.live.machine import Table
from livetx.live.segmenter import SentenceSegmenter, speakable
from livetx.providers.base import ChatModel, Message, ProviderError, SpeechSynthesizer
from livetx.tools import ToolCall, ToolOutcome, offers_tools, stream_reply
from livetx.tools.record import ToolStep, ToolTrail

#: Sends a frame, or (binary audio transport only) one binary message of audio.
Emit = Callable[[frames.Frame | bytes], None]
_log = Logger()

_RUNNING = ("streaming", "speaking")
_OVER = ["finished", "failed", "interrupted"]

#: A turn's life. ``interrupt`` and ``fail`` after the end change nothing.
TURN = Table("turn", ["streaming", "speaking", *_OVER], [
    {"trigger": "model_done", "source": "streaming", "dest": "speaking"},
    {"trigger": "finish", "source": "speaking", "dest": "finished"},
    {"trigger": "fail", "source": list(_RUNNING), "dest": "failed"},
    {"trigger": "interrupt", "source": list(_RUNNING), "dest": "interrupted"},
    {"trigger": "fail", "source": _OVER, "dest": None},
    {"trigger": "interrupt", "source": _OVER, "dest": None},
], initial="streaming")


@dataclass(frozen=True)
class TurnResult:
    """What the conversation keeps of a turn."""

    #: Exactly the reply text the client was sent as deltas.
    reply: str
    interrupted: bool = False
    failed: bool = False
    #: Per sentence whose audio was sent, in order: where it ends in ``reply``
    #: and how long its audio plays in ms (None when the format does not say).
    spoken: tuple[tuple[int, float | None], ...] = ()
    #: The tool calls the model made, each with where in ``reply`` it was made.
    tools: tuple[ToolStep, ...] = ()

    def heard(self, audio_end_ms: float) -> str:
        """The reply cut to the sentences whose audio ended by ``audio_end_ms`` of playback."""
        played, end = 0.0, 0
        for text_end, duration in self.spoken:
            if duration is None:
                break
            played += duration
            if played > audio_end_ms:
                break
            end = text_end
        return self.reply[:end]


def _settled(d: Deferred[bytes]) -> Deferred[tuple[bool, Any]]:
    """Turn success or failure into a value, so no failure is left unhandled."""
    return d.addCallbacks(lambda audio: (True, audio), lambda f: (False, f))


class Turn:
    """Runs one reply and reports it; :meth:`interrupt` stops it at once."""

    def __init__(
        self,
        *,
        clock: IReactorTime,
        llm: ChatModel,
        tts: SpeechSynthesizer | None,
        emit: Emit,
        messages: Sequence[Message],
        started_at: float,
        tts_concurrency: int = 2,
        binary_audio: bool = False,
        listener: TurnListener | None = None,
        voice: str | None = None,
    ) -> None:
        self.state = TURN.initial
        self._clock = clock
        self._llm = llm
        self._tts = tts
        self._emit = emit
        self._listener: TurnListener = listener or Ignore()
        self._messages = messages
        self._started_at = started_at
        self._binary_audio = binary_audio
        #: The session's voice (``session_update``), checked there; None: the engine's default.
        self._voice = voice
        self._segmenter = SentenceSegmenter()
        self._semaphore = DeferredSemaphore(max(1, tts_concurrency))
        self._tail: Deferred[Any] = succeed(None)
        self._pending: set[Deferred[Any]] = set()
        self._reply: list[str] = []
        self._spoken: list[tuple[int, float | None]] = []
        self._llm_call: Deferred[None] | None = None
        self._llm_started = 0.0
        self._llm_ttft: float | None = None
        self._tts_started: float | None = None
        self._tts_first: float | None = None
        self._tts_error_sent = False
        #: Set while the client reads too slowly: no new speech is started.
        self._gate: Deferred[None] | None = None
        #: The model's tool calls, when it is offered tools (livetx.tools).
        self._trail: ToolTrail | None = ToolTrail(clock) if offers_tools(llm) else None
        #: True while an interrupt cancels the work: cancelled calls' results still go out.
        self._cancelling = False
        self.done: Deferred[TurnResult] = Deferred()

    @property
    def reply(self) -> str:
        return "".join(self._reply)

    @property
    def unheard(self) -> bool:
        """Nothing of the reply has been played or acted on: no audio sent, no tool called
        (and, with no speech engine, no text). Such a turn can be taken back whole."""
        if self._spoken or self.acted:
            return False
        return self._tts is not None or not self._reply

    @property
    def acted(self) -> bool:
        """The model has called a tool: the turn did something, and cannot be taken back."""
        return self._trail is not None and bool(self._trail.steps)

    def start(self) -> Deferred[TurnResult]:
        """Begin streaming; ``done`` fires when the turn is over for any reason."""
        self._llm_started = self._clock.seconds()
        self._listener.provider_called("llm", self._llm.model)
        try:
            self._llm_call = stream_reply(self._llm, self._messages, self._on_delta, self)
        except Exception:
            self._fail(Failure())
            return self.done
        self._llm_call.addCallbacks(self._llm_finished, self._llm_failed)
        return self.done

    def silence(self) -> None:
        """Stop the turn's work now; running tool calls report their cancellation as they stop.

        The session calls this before it sends ``stop_play``, so those
        ``tool_result`` frames come before it, then :meth:`interrupt`.
        """
        if self.state in _RUNNING:
            TURN.fire(self, "interrupt")
            self._cancelling = True
            self._cancel_work()
            self._cancelling = False

    def interrupt(self) -> TurnResult:
        """Silence the turn, cancel all its work, and say what was sent."""
        self.silence()
        result = self._result(interrupted=True)  # with the cancelled calls' results
        if not self.done.called:
            self.done.callback(result)
        return result

    # -- tools (livetx.tools.ToolListener) ------------------------------------

    def tool_started(self, call: ToolCall, arguments: Any) -> None:
        """The text said before the call is spoken now, while the call runs, not held back."""
        if self._trail is not None and self.state == "streaming":
            for sentence in self._segmenter.flush():
                self._speak(sentence)
            self._listener.tool_called(call.id, call.name)
            self._emit({"t": "tool_call", "data": self._trail.started(len(self.reply), call, arguments)})

    def tool_finished(self, call: ToolCall, outcome: ToolOutcome) -> None:
        """Sent even while an interrupt cancels the call: the client learns it ended."""
        if self._trail is not None and (self.state == "streaming" or self._cancelling):
            self._listener.tool_finished(call.id, call.name, outcome.ok, outcome.status, outcome.seconds)
            self._emit({"t": "tool_result", "data": self._trail.finished(call, outcome)})

    def filler_due(self, text: str) -> None:
        """A tool runs long: say ``text`` so a voice user is not left in silence."""
        if self.state == "streaming":
            self._speak(text, filler=True)

    # -- the pipeline ----------------------------------------------------

    def _on_delta(self, text: str) -> None:
        if self.state != "streaming" or not text:
            return
        try:
            self._take_delta(text)
        except Exception:
            self._fail(Failure())

    def _take_delta(self, text: str) -> None:
        if self._llm_ttft is None:
            now = self._clock.seconds()
            self._llm_ttft = now - self._llm_started
            self._listener.first_delta(now - self._started_at)
        self._reply.append(text)
        self._emit({"t": "bot_delta_chunk", "data": {"text": text}})
        for sentence in self._segmenter.feed(text):
            self._speak(sentence)

    def pause(self) -> None:
        """Backpressure: the socket's buffer is full, so start no more speech.

        Audio is what fills a slow client's buffer; requests already running
        finish, later sentences wait for :meth:`resume`. Deltas keep flowing:
        they are small, and the model's stream is not ours to hold open.
        """
        if self._gate is None:
            self._gate = Deferred()

    def resume(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.callback(None)

    def _speak(self, sentence: str, filler: bool = False) -> None:
        tts, spoken = self._tts, speakable(sentence)
        if tts is None or not spoken:
            return  # an emoji-only sentence: its text is in the deltas, it has no sound
        if self._tts_started is None:
            self._tts_started = self._clock.seconds()
            self._listener.provider_called("tts", tts.name)
        flowing = succeed(None) if self._gate is None else waiter_for(self._gate)
        audio = _settled(flowing.addCallback(lambda _: self._semaphore.run(tts.synthesize, spoken, self._voice)))
        self._pending.add(audio)
        audio.addBoth(self._forget, audio)
        self._tail.addCallback(lambda _: audio)
        self._tail.addCallback(self._play, sentence, filler)

    def _forget(self, result: Any, d: Deferred[Any]) -> Any:
        self._pending.discard(d)
        return result

    def _play(self, outcome: tuple[bool, Any], sentence: str, filler: bool = False) -> None:
        ok, value = outcome
        if self.state not in _RUNNING:
            return
        if not ok:
            self._tts_failed(value)
            return
        now = self._clock.seconds()
        if self._tts_first is None:
            self._tts_first = now - (self._tts_started or now)
            self._listener.first_audio(now - self._started_at)
        emit = self._emit
        emit({"t": "bot_text_chunk", "data": {"text": sentence}})
        if self._binary_audio:  # a header frame, then the audio as it is
            emit({"t": "response", "format": audio_format(value), "bytes": len(value)})
            emit(value)
        else:
            emit({"t": "response", "data": base64.b64encode(value).decode("ascii")})
        self._listener.audio_sent(value)
        # A filler is heard but is no part of the reply: it moves playback, not text.
        end = (self._spoken[-1][0] if self._spoken else 0) if filler else self._sentence_end(sentence)
        self._spoken.append((end, duration_ms(value)))

    def _sentence_end(self, sentence: str) -> int:
        """Where a spoken sentence ends in the reply (sentences come in reply order)."""
        reply, start = self.reply, self._spoken[-1][0] if self._spoken else 0
        found = reply.find(sentence, start)
        return len(reply) if found < 0 else found + len(sentence)

    def _tts_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        _log.failure("Speech synthesis failed", failure, level=_warn_level(failure))
        if not self._tts_error_sent:
            self._tts_error_sent = True
            self._emit(frames.error(*report_failure(failure, ErrorCode.TTS_ERROR, self._listener, "tts")))

    def _llm_finished(self, _: None) -> None:
        if self.state != "streaming":
            return
        TURN.fire(self, "model_done")
        for sentence in self._segmenter.flush():
            self._speak(sentence)
        self._listener.provider_timing(
            "llm", self._llm.model, self._llm_ttft or 0.0, self._clock.seconds() - self._llm_started
        )
        self._tail.addCallback(self._finish)
        self._tail.addErrback(self._fail)

    def _llm_failed(self, failure: Failure) -> None:
        self._fail(failure)

    def _finish(self, _: object) -> None:
        if self.state != "speaking":
            return
        now = self._clock.seconds()
        if self._tts_first is not None:
            self._listener.provider_timing(
                "tts", self._tts.name if self._tts else "none", self._tts_first, now - (self._tts_started or now)
            )
        elif self._reply:
            self._emit({"t": "bot_msg", "data": {"text": self.reply, "ts": frames.timestamp(now)}})
        TURN.fire(self, "finish")
        self.done.callback(self._result())

    def _fail(self, failure: Failure) -> None:
        """A provider or a bug ended the turn: say so, then end it cleanly."""
        if self.state not in _RUNNING:
            return
        _log.failure("Turn failed", failure, level=_warn_level(failure))
        self._cancel_work()
        self._emit(frames.error(*report_failure(failure, ErrorCode.INTERNAL_ERROR, self._listener)))
        TURN.fire(self, "fail")
        self.done.callback(self._result(failed=True))

    def _result(self, **outcome: bool) -> TurnResult:
        tools = tuple(self._trail.steps) if self._trail is not None else ()
        return TurnResult(self.reply, spoken=tuple(self._spoken), tools=tools, **outcome)

    def _cancel_work(self) -> None:
        if self._llm_call is not None and not self._llm_call.called:
            self._llm_call.cancel()
        for d in list(self._pending):
            d.cancel()
        self._pending.clear()


def report_failure(
    failure: Failure, default_code: ErrorCode, listener: TurnListener, kind: str | None = None
) -> tuple[ErrorCode, str]:
    """:func:`describe_failure`, told to ``listener`` as the error frame it is about to send.

    A provider's failure names its kind; ``kind`` is the provider a failure
    that is not a :class:`ProviderError` still counts against (speech that
    failed with a bug is still speech that failed).
    """
    code, message = describe_failure(failure, default_code)
    if isinstance(failure.value, ProviderError):
        kind = failure.value.kind
    if kind is not None:
        listener.provider_failed(kind)
    listener.error_sent(code)
    return code, message


def _warn_level(failure: Failure) -> LogLevel:
    level: LogLevel = LogLevel.warn if failure.check(ProviderError) else LogLevel.critical
    return level
