"""Capturing the user's voice: the open segment, and talk mode's detector and partials.

The capture is orthogonal to the turn: a client may start speaking while
the bot is still answering (that is how barge-in begins), so a segment can
be open whatever the session's state. Its own states (:data:`CAPTURE`):

- ``empty``: no segment is open;
- ``segment``: the client opened one with ``start_speaking`` (push to talk);
- ``utterance``: talk mode's voice detector heard speech begin, and the
  audio since goes into the segment; transcripts of it so far
  (``user_partial``) are asked for as it grows, and at each pause
  (:mod:`livetx.live.streaming_stt`), which may then be the final one;
  the owner hears of each pause's transcript (a speculative reply may
  start on it, :mod:`livetx.live.speculation`, and speech that goes on
  after the pause discards it).

``take`` hands the segment to a turn and empties the capture; a segment
grown past its cap is dropped. A segment :meth:`Capture.carry` was given
(the first half of a request the user went on with) is the start of the
next utterance heard.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.audio import BYTES_PER_SECOND, to_wav
from livetx.errors import ErrorCode
from livetx.live import frames
from livetx.live.frames import Frame, FrameError
from livetx.live.machine import Table
from livetx.live.echo import EchoGuard
from livetx.live.endpoint import EndOfTurn, TurnEnd
from livetx.live.settings import Settings
from livetx.live.speculation import Speculation
from livetx.live.streaming_stt import (
    KEEP_AFTER_BYTES, EarlyDecode, decode_early, decodes_at_pauses, final_transcript, pause_ms,
)
from livetx.live.vad import VoiceDetector
from livetx.providers.base import PartialRecognizer, SpeechRecognizer, TurnEndModel

_log = Logger()

#: Talk mode: audio between two partial transcripts of an utterance, at least.
#: Each partial decodes the whole utterance so far, so the gap also grows with
#: it (a quarter of what was heard): all the partials of an utterance then
#: cost a few times its final decode, not its length squared.
PARTIAL_EVERY_BYTES = BYTES_PER_SECOND // 2

_ANY = ["empty", "segment", "utterance"]

CAPTURE = Table("capture", _ANY, [
    {"trigger": "open", "source": _ANY, "dest": "segment"},
    {"trigger": "hear", "source": _ANY, "dest": "utterance"},
    {"trigger": "take", "source": ["segment", "utterance"], "dest": "empty"},
    {"trigger": "drop", "source": _ANY, "dest": "empty"},
], initial="empty")


class Segment:
    """The PCM of one utterance, capped so a stuck client cannot grow it forever."""

    __slots__ = ("stamp", "pcm", "heard", "partial", "voiced", "early", "asked", "done", "voiced_at",
                 "stopped_at", "voiced_ms", "known", "ahead")

    def __init__(self, stamp: str | None) -> None:
        self.stamp = stamp
        self.pcm = bytearray()
        #: Talk mode: how much audio the last partial transcript covered, and its text.
        self.heard = 0
        self.partial = ""
        #: Talk mode: bytes of ``pcm`` up to the end of its last speech frame,
        #: and the decode started at the latest pause (:mod:`livetx.live.streaming_stt`).
        self.voiced = 0
        self.early: EarlyDecode | None = None
        #: Semantic end of turn: ``voiced`` when the model was last asked about
        #: it, and when it last judged the speaker done.
        self.asked = -1
        self.done = -1
        #: Talk mode, on the session's clock: when the last speech frame was
        #: heard, and when the detector declared the utterance over.
        self.voiced_at: float | None = None
        self.stopped_at: float | None = None
        #: Talk mode, on the microphone stream's timeline: where its last speech frame ends.
        self.voiced_ms: int | None = None
        #: Talk mode: bytes at the start of ``pcm`` already transcribed, and their text or the
        #: decode still making it (the first half of a request the user went on with, or the start
        #: of a long utterance, up to a pause: a stable prefix): decodes at pauses hear only the rest.
        self.known: tuple[int, str | EarlyDecode] = (0, "")
        #: The reply started on the transcript at its last pause, unsent (livetx.live.speculation).
        self.ahead: Speculation | None = None

    @property
    def transcribed(self) -> tuple[int, str] | None:
        """The bytes of ``pcm`` and their transcript, to keep when the user goes on: when a decode at a
        pause covered all its speech, and it is long enough to be decoded alone (KEEP_AFTER_BYTES)."""
        early = self.early
        if early is None or early.voiced != self.voiced or early.text is None or len(self.pcm) < KEEP_AFTER_BYTES:
            return None
        return len(self.pcm), early.text

    def wav(self) -> bytes:
        return to_wav(self.pcm)

    def transcript(self, stt: SpeechRecognizer, wav: bytes) -> Deferred[str]:
        """The whole segment's transcript (``wav`` is it), reusing the decode of its last pause when
        that covered all its speech."""
        return final_transcript(self.early, self.voiced, stt, wav)

    def discard(self) -> None:
        """The segment will not be transcribed: stop a decode of it that runs, and a reply begun on it."""
        for early in (self.early, self.known[1]):
            if isinstance(early, EarlyDecode):
                early.result.cancel()
        self.went_on()

    def went_on(self) -> None:
        """The speaker went on after a pause (or the segment is dropped): a reply begun on it is stale."""
        if self.ahead is not None:
            self.ahead.discard()
            self.ahead = None


class Owner(Protocol):
    """The session a capture belongs to."""

    def fire_safely(self, event: str, **kwargs: Any) -> None:
        """Run a session event; a refusal becomes an error frame."""

    def emit(self, frame: Frame) -> None:
        """Send a frame to the client."""

    def error(self, code: ErrorCode, message: str) -> None:
        """Send an error frame to the client (and report it sent)."""

    def paused(self, segment: Segment, text: str) -> None:
        """Talk mode: ``segment`` is transcribed up to a pause in it (``text``), and nothing was said since."""


class Capture:
    """One connection's voice input; the session asks, the capture keeps the audio."""

    __slots__ = ("state", "_owner", "_clock", "_stt", "_max_seconds", "_max_bytes", "_segment", "_detector",
                 "_partial", "_carried", "_turn_end_model", "_end_of_turn", "_turn_end", "echo")

    def __init__(
        self, owner: Owner, clock: IReactorTime, stt: SpeechRecognizer | None, max_segment_seconds: float,
        turn_end_model: TurnEndModel | None = None,
    ) -> None:
        self.state = CAPTURE.initial
        self._owner = owner
        self._clock = clock
        self._stt = stt
        self._max_seconds = max_segment_seconds
        self._max_bytes = int(max_segment_seconds * BYTES_PER_SECOND)
        self._segment: Segment | None = None
        self._detector: VoiceDetector | None = None
        self._partial: Deferred[str] | None = None
        #: The first half of a request the user went on with: the next utterance starts with it.
        self._carried: Segment | None = None
        self._turn_end_model = turn_end_model
        #: Talk mode: when an utterance ends (livetx.live.endpoint), and with
        #: ``end_of_turn: semantic`` the model asked at each pause.
        self._end_of_turn: EndOfTurn | None = None
        self._turn_end: TurnEnd | None = None
        #: Talk mode: the reply audio that may be playing, so its echo starts nothing (a turn listener).
        self.echo = EchoGuard(lambda: None if self._detector is None else self._detector.elapsed_ms)

    @property
    def is_open(self) -> bool:
        return self.state != "empty"

    @property
    def stamp(self) -> str | None:
        return None if self._segment is None else self._segment.stamp

    # -- the segment ---------------------------------------------------------

    def open(self, stamp: str | None) -> None:
        """``start_speaking``: a new segment (one still open is replaced)."""
        CAPTURE.fire(self, "open")
        self._segment = Segment(stamp)

    def append(self, pcm: bytes) -> None:
        """Add audio; past the cap the segment is dropped and the client told (FrameError)."""
        segment = self._segment
        assert segment is not None
        if len(segment.pcm) + len(pcm) <= self._max_bytes:
            segment.pcm += pcm
            return
        # Refuse before copying: the cap bounds memory, not just turns.
        self.drop()
        self._owner.fire_safely("segment_dropped")
        raise FrameError(ErrorCode.AUDIO_TOO_LONG, f"voice segment longer than {self._max_seconds:g} s; dropped")

    def take(self) -> Segment:
        """Hand the segment to a turn."""
        segment, self._segment = self._segment, None
        assert segment is not None
        CAPTURE.fire(self, "take")
        self._cancel_partial()
        return segment

    def drop(self) -> None:
        if self._segment is not None:
            self._segment.discard()
        self._segment = None
        CAPTURE.fire(self, "drop")

    def carry(self, segment: Segment) -> None:
        """The user goes on with the request ``segment`` held: the utterance heard next continues it."""
        self._carried = segment

    # -- talk mode -------------------------------------------------------------

    def restart_detection(self, settings: Settings) -> None:
        """Turn detection changed hands: an utterance half-heard is dropped."""
        self.stop_listening()
        if settings.server_detection:
            self._end_of_turn = end_of_turn = EndOfTurn(settings, decodes_at_pauses(self._stt))
            self._detector = VoiceDetector(settings, self._clock, self, is_echo=self.echo.is_echo,
                                           end_silence_ms=end_of_turn.detector_silence_ms)
            model = self._turn_end_model
            semantic = settings.end_of_turn == "semantic" and model is not None
            self._turn_end = TurnEnd(model, settings.eagerness) if semantic and model is not None else None

    def stop_listening(self) -> None:
        """Drop an utterance half-heard and detect no more (closing, or the server is stopping).

        Without this a talk-mode detector would end the utterance on its own
        timer and start a turn while the server waits for turns to finish.
        """
        if self._detector is not None:
            self._detector.close()
            self._detector = None
        self._cancel_partial()
        self._carried = None
        if self.is_open:
            self.drop()
            self._owner.fire_safely("segment_dropped")

    def feed(self, pcm: bytes) -> None:
        if self._detector is not None:  # None once the server stops listening
            self._detector.feed(pcm)

    def speech_started(self, pcm: bytes, start_ms: int) -> None:
        """The detector heard speech begin (it calls this mid-``feed``)."""
        self._owner.fire_safely("speech_started", pcm=pcm, start_ms=start_ms)

    def speech_audio(self, pcm: bytes) -> None:
        if self.state == "utterance":  # not after a segment too long was dropped
            try:
                self.append(pcm)
            except FrameError as e:
                self._owner.error(e.code, e.message)
                return
            self._follow_speech()
            self._request_partial()
        else:  # a segment too long was dropped: its end is the rule's with nothing known of it
            self._judge(None)

    def speech_stopped(self, end_ms: int) -> None:
        """The detector heard enough silence, or the stream stalled (then from the clock)."""
        self._owner.fire_safely("speech_stopped", end_ms=end_ms)

    def hear(self, pcm: bytes, start_ms: int) -> None:
        """The session accepted the detector's new utterance: open it with its first audio.

        A carried segment (the request's first half) comes first, so the
        utterance is transcribed, and answered, as one request.
        """
        self._owner.emit({"t": "speech_started", "data": {"audio_start_ms": start_ms}})
        CAPTURE.fire(self, "hear")
        segment = self._segment = Segment(None)
        carried, self._carried = self._carried, None
        if carried is not None:
            segment.known = carried.transcribed or (0, "")
            carried.discard()
            segment.pcm += carried.pcm
        self.append(pcm)
        self._follow_speech()

    def announce_stop(self, end_ms: int) -> None:
        self._cancel_partial()  # the final transcript must not queue behind it
        if self._segment is not None:
            self._segment.stopped_at = self._clock.seconds() if self._detector is None else self._detector.heard_at()
        self._owner.emit({"t": "speech_stopped", "data": {"audio_end_ms": end_ms}})

    def _follow_speech(self) -> None:
        """Note where the utterance's speech ends so far; at a pause, decode it (streaming_stt),
        ask whether the speaker is done, and end it if the rule says so (endpoint)."""
        segment, detector = self._segment, self._detector
        if segment is None or detector is None:
            return
        silent = detector.trailing_silence_ms
        segment.voiced_ms = detector.elapsed_ms - silent
        if silent == 0:
            segment.voiced, segment.voiced_at = len(segment.pcm), detector.voiced_at
            segment.went_on()
            return
        self._decode_early(segment, detector, silent)
        turn_end = self._turn_end
        if turn_end is not None and silent >= turn_end.pause_ms and segment.asked != segment.voiced:
            segment.asked = voiced = segment.voiced
            turn_end.ask(bytes(segment.pcm), lambda: self._turn_ended(segment, voiced))
        self._judge(segment)

    def _turn_ended(self, segment: Segment, voiced: int) -> None:
        """The model says the speaker is done (about the speech up to ``voiced``)."""
        segment.done = voiced
        self._judge(segment)

    def _judge(self, segment: Segment | None) -> None:
        """End the utterance if the rule says its silence so far is enough, given what is known of it
        now; verdicts and transcripts of speech the user has since continued count for nothing."""
        detector, end_of_turn = self._detector, self._end_of_turn
        if segment is not self._segment or detector is None or end_of_turn is None or end_of_turn.rule == "silence":
            return
        silent = detector.trailing_silence_ms
        early = None if segment is None or segment.early is None or segment.early.voiced != segment.voiced \
            else segment.early
        done = segment is not None and segment.done == segment.voiced
        wait = end_of_turn.wait_ms(None if early is None else early.text, early is not None and not early.settled, done)
        if silent and silent >= wait:
            detector.end_now()

    def _decode_early(self, segment: Segment, detector: VoiceDetector, silent: int) -> None:
        early = segment.early
        if (silent < pause_ms(detector.silence_ms) or not decodes_at_pauses(self._stt)
                or (early is not None and early.voiced == segment.voiced)):
            return
        assert self._stt is not None
        if early is not None:  # the speaker went on after it
            if not early.settled and early.covered - segment.known[0] >= KEEP_AFTER_BYTES:
                segment.known = (early.covered, early)  # long enough to keep: the next decode follows it
            else:
                early.result.cancel()  # stale
        known, prefix = segment.known
        covered = len(segment.pcm)
        segment.early = decode_early(self._stt, bytes(segment.pcm[known:]), segment.voiced,
                                     lambda early: self._decoded(early, segment), covered, prefix)

    def _decoded(self, early: EarlyDecode, segment: Segment) -> None:
        """A decode at a pause (of ``segment``'s first ``early.covered`` bytes) has settled: a
        partial transcript, perhaps a reply begun ahead, perhaps the end of the turn, and once it
        is long enough, words to keep."""
        if early.text is None:
            if segment.known[1] is early:  # its words are lost: later pauses decode from the start
                segment.known = (0, "")
        else:
            self._show_partial(early.text, segment)
            if early.covered - segment.known[0] >= KEEP_AFTER_BYTES:
                segment.known = (early.covered, early.text)
            if (early.text and segment is self._segment and segment.voiced == early.voiced
                    and self._detector is not None):
                self._owner.paused(segment, early.text)  # nothing said since the pause: a reply may begin
        self._judge(segment)

    def _request_partial(self) -> None:
        """Transcribe the utterance so far, if the engine can, one request at a time."""
        stt, segment = self._stt, self._segment
        if (segment is None or self._partial is not None or not isinstance(stt, PartialRecognizer)
                or len(segment.pcm) - segment.heard < max(PARTIAL_EVERY_BYTES, segment.heard // 4)):
            return
        segment.heard = len(segment.pcm)
        self._partial = maybeDeferred(stt.partial, bytes(segment.pcm))
        self._partial.addCallbacks(self._partial_heard, self._partial_failed, callbackArgs=(segment,))

    def _partial_heard(self, text: str, segment: Segment) -> None:
        self._partial = None
        self._show_partial(text, segment)
        self._request_partial()  # audio may have piled up meanwhile

    def _show_partial(self, text: str, segment: Segment) -> None:
        text = text.strip()
        if segment is self._segment and text and text != segment.partial:
            segment.partial = text
            self._owner.emit({"t": "user_partial", "data": {"text": text}})

    def _partial_failed(self, failure: Failure) -> None:
        self._partial = None
        if not failure.check(CancelledError):
            _log.failure("Partial transcription failed", failure)

    def _cancel_partial(self) -> None:
        if self._partial is not None:
            self._partial.cancel()

