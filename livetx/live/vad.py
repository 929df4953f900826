"""Server-side turn detection: where an utterance starts and ends in a microphone stream.

PocketSphinx's voice activity detector (WebRTC's, shipped in the wheel we
already use for speech-to-text) classifies each 30 ms frame as speech or not;
this module turns those verdicts into utterances:

- ``quiet``: frames go into a ring buffer holding the last ``preroll_ms``, so
  the first syllable, which the detector hears late, is not lost.
- ``onset``: speech was heard, but it only counts once ``min_speech_ms`` of it
  has accumulated; ``silence_ms`` of silence before that drops it as noise,
  and so does an onset that has lasted ``min_speech_ms + silence_ms`` without
  enough speech in it (scattered clicks).
- ``speech``: every frame is passed on; ``silence_ms`` of silence ends it
  (or the end-of-turn rule, :mod:`livetx.live.endpoint`: sooner by
  :meth:`VoiceDetector.end_now`, or later).

Decisions use the stream's own time (its sample count), so network jitter
cannot split an utterance. Wall time matters once: a client that stops
sending mid-utterance (muted, asleep) ends it after ``silence_ms`` on the
clock. Memory is bounded whatever the stream's length: the ring buffer, an
onset of at most ``min_speech_ms + silence_ms``, and less than one frame of
leftover bytes. The utterance itself is the listener's, which
caps it.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from livetx.audio import SAMPLE_RATE
from livetx.live.machine import Table

_OPEN = ["quiet", "onset", "speech"]

#: The detector's states (the module docstring says what each means).
VOICE = Table("voice detector", [*_OPEN, "closed"], [
    {"trigger": "heard", "source": "quiet", "dest": "onset"},
    {"trigger": "confirm", "source": "onset", "dest": "speech"},
    {"trigger": "noise", "source": "onset", "dest": "quiet"},
    {"trigger": "silence", "source": "speech", "dest": "quiet"},
    {"trigger": "close", "source": _OPEN, "dest": "closed"},
], initial="quiet")


class Tunables(Protocol):
    """The detector's settings (see :class:`livetx.live.settings.Settings`)."""

    @property
    def vad(self) -> str: ...
    @property
    def vad_aggressiveness(self) -> int: ...
    @property
    def min_speech_ms(self) -> int: ...
    @property
    def silence_ms(self) -> int: ...
    @property
    def preroll_ms(self) -> int: ...


class SpeechListener(Protocol):
    """Who hears about utterances: the live session."""

    def speech_started(self, pcm: bytes, start_ms: int) -> None:
        """Speech confirmed; ``pcm`` is the pre-roll and onset, ``start_ms`` stream time."""

    def speech_audio(self, pcm: bytes) -> None:
        """More audio of the current utterance."""

    def speech_stopped(self, end_ms: int) -> None:
        """The utterance is over (silence, or the stream stalled)."""


def pocketsphinx_vad(aggressiveness: int) -> tuple[Callable[[bytes], bool], int]:
    """A speech/non-speech classifier for 16 kHz PCM16 and the frame size it takes."""
    from pocketsphinx import Vad

    vad = Vad(mode=aggressiveness, sample_rate=SAMPLE_RATE)
    return vad.is_speech, vad.frame_bytes


def chosen_vad(tunables: Tunables) -> tuple[Callable[[bytes], bool], int]:
    """The classifier the settings name (see :mod:`livetx.live.silero`)."""
    if tunables.vad == "silero":
        from livetx.live.silero import silero_vad

        return silero_vad()
    return pocketsphinx_vad(tunables.vad_aggressiveness)


class VoiceDetector:
    """Feed PCM of any size; the listener hears of each utterance as it happens."""

    def __init__(
        self,
        tunables: Tunables,
        clock: IReactorTime,
        listener: SpeechListener,
        classifier: tuple[Callable[[bytes], bool], int] | None = None,
        is_echo: Callable[[bytes, int], bool] | None = None,
        end_silence_ms: int | None = None,
    ) -> None:
        self._is_speech, self._frame_bytes = classifier or chosen_vad(tunables)
        self._frame_ms = self._frame_bytes * 1000 // (2 * SAMPLE_RATE)
        self._min_speech_ms = tunables.min_speech_ms
        self._silence_ms = tunables.silence_ms
        #: The silence after which speech ends on its own: ``silence_ms``, or
        #: longer when an end-of-turn rule (livetx.live.endpoint) ends it
        #: sooner by :meth:`end_now` when it can tell the speaker is done.
        self._end_silence_ms = tunables.silence_ms if end_silence_ms is None else end_silence_ms
        self._max_onset = (tunables.min_speech_ms + tunables.silence_ms) // self._frame_ms
        self._clock = clock
        self._listener = listener
        #: Whether an onset (its audio, and where it ends in the stream) is
        #: the reply's own voice coming back (livetx.live.echo): then it is noise.
        self._is_echo = is_echo
        self._preroll: deque[bytes] = deque(maxlen=tunables.preroll_ms // self._frame_ms)
        self._onset: list[bytes] = []
        self._pending = bytearray()
        self._stall: IDelayedCall | None = None
        self.state = VOICE.initial
        #: Stream time: milliseconds of audio classified so far.
        self.elapsed_ms = 0
        self._start_ms = 0
        self._voiced_ms = 0
        self._silent_ms = 0
        #: When (the clock's time) the last speech frame was heard, on the
        #: stream's timeline: where the latency of a voice turn is measured from.
        self.voiced_at = 0.0

    @property
    def silence_ms(self) -> int:
        """The silence that ends an utterance under the silence rule (and a stalled stream's)."""
        return self._silence_ms

    @property
    def trailing_silence_ms(self) -> int:
        """How much silence has followed the last speech frame of an utterance (0 while speech goes on)."""
        return self._silent_ms

    def feed(self, pcm: bytes) -> None:
        self._pending += pcm
        frame_bytes = self._frame_bytes
        while len(self._pending) >= frame_bytes:
            frame = bytes(self._pending[:frame_bytes])
            del self._pending[:frame_bytes]
            self._classify(frame)
        self._watch_stall()

    def end_now(self) -> None:
        """End the utterance at once, in a silence after speech (the end-of-turn model says it is over)."""
        if self.state == "speech" and self._silent_ms > 0:
            self._stop()

    def close(self) -> None:
        """Stop for good (the connection closed or the client switched detection off)."""
        self._cancel_stall()
        self._preroll.clear()
        self._onset = []
        self._pending.clear()
        if self.state != "closed":
            VOICE.fire(self, "close")

    # -- the state machine -------------------------------------------------

    def _classify(self, frame: bytes) -> None:
        speech = self._is_speech(frame)
        self.elapsed_ms += self._frame_ms
        if self.state == "quiet":
            if speech:
                VOICE.fire(self, "heard")
                self._onset = [frame]
                self._start_ms = self.elapsed_ms - self._frame_ms
                self._voiced_ms, self._silent_ms = self._frame_ms, 0
                self.voiced_at = self.heard_at()
            else:
                self._preroll.append(frame)
            return
        self._silent_ms = 0 if speech else self._silent_ms + self._frame_ms
        if speech:
            self.voiced_at = self.heard_at()
        if self.state == "onset":
            self._onset.append(frame)
            if speech:
                self._voiced_ms += self._frame_ms
            if self._voiced_ms >= self._min_speech_ms:
                self._confirm()
            elif self._silent_ms >= self._silence_ms or len(self._onset) >= self._max_onset:
                self._drop_onset()
        elif self.state == "speech":
            self._listener.speech_audio(frame)  # which may have ended it (end_now)
            if self.state == "speech" and self._silent_ms >= self._end_silence_ms:
                self._stop()

    def heard_at(self) -> float:
        """When the frame being classified ended, on the stream's timeline (the clock's time): audio
        that came in one burst arrived together, so a frame with more of it after it ended that much earlier."""
        return self._clock.seconds() - len(self._pending) / (2 * SAMPLE_RATE)

    def _confirm(self) -> None:
        if self._is_echo is not None and self._is_echo(b"".join(self._onset), self.elapsed_ms):
            self._drop_onset()
            return
        audio = b"".join([*self._preroll, *self._onset])
        self._preroll.clear()
        self._onset = []
        VOICE.fire(self, "confirm")
        self._listener.speech_started(audio, self._start_ms)

    def _drop_onset(self) -> None:
        """Too little speech: noise. Its audio becomes pre-roll, as any quiet audio."""
        self._preroll.extend(self._onset)
        self._onset = []
        VOICE.fire(self, "noise")

    def _stop(self) -> None:
        VOICE.fire(self, "silence")
        self._cancel_stall()
        self._listener.speech_stopped(self.elapsed_ms)

    # -- a stream that stops mid-utterance --------------------------------

    def _watch_stall(self) -> None:
        if self.state not in ("onset", "speech"):
            return
        if self._stall is not None and self._stall.active():
            self._stall.reset(self._silence_ms / 1000)
        else:
            self._stall = self._clock.callLater(self._silence_ms / 1000, self._stalled)

    def _stalled(self) -> None:
        self._stall = None
        if self.state == "speech":
            self._stop()
        elif self.state == "onset":
            self._drop_onset()

    def _cancel_stall(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
