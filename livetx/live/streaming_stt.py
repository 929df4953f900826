"""Recognition that keeps up with the speaker: the final transcript decoded before the endpoint.

Talk mode's detector ends an utterance only once ``silence_ms`` of silence
has followed it. Whisper hears a window of at least 10 s, so a decode costs
about the same whatever a request's length, and decoding only after the
endpoint put a whole decode between the end of speech and the reply.

Instead, once the speaker has paused for :func:`pause_ms`, the utterance so
far is decoded at once. If the speaker does not go on, that decode covered
every voiced frame and *is* the final transcript: it is ready at the
endpoint or soon after, and has the same words as a decode after the
endpoint would (the same audio up to a little more trailing silence, which
the recognizer's own voice filter drops). If the speaker goes on, the decode
was a partial transcript (sent as ``user_partial``) and the next pause
starts another.

A long utterance keeps the words of its start: once a decode at a pause
covers :data:`KEEP_AFTER_BYTES` beyond the words already kept, its words are
kept too, and later pauses decode only the audio after it. A decode still
running when the speaker pauses again is kept the same way if it is long
enough, and the next decode is chained to it (its text is the kept decode's
followed by its own), so no audio is decoded twice and the final decode
never waits behind a stale one that covered most of the speech; a shorter
stale decode is cancelled.

Only for a recognizer that says it decodes locally (``decodes_at_pauses``):
a hosted service would be paid for every pause.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.audio import BYTES_PER_SECOND, to_wav
from livetx.providers.base import SpeechRecognizer

_log = Logger()

#: Silence after speech that starts a decode of the utterance so far: three
#: of Silero's frames. Gaps between words rarely reach it (none in the short
#: requests of benchmarks/v2v_bench.py, 19 in a 44 s passage read aloud
#: against 15 at 160 ms), and the words are the same as at 160 ms or after
#: the endpoint (``stt_bench.py --early``). Every millisecond of it is one of
#: voice to voice when the transcript ends the turn (livetx.live.endpoint).
PAUSE_MS = 96


#: A long utterance, or a request the user went on with, keeps the transcript
#: of its start up to a pause once that start is this long (and then every
#: time as much more was heard and decoded), and later pauses decode only the
#: rest. The part decoded at the end then stays within Whisper's shortest
#: window (10 s, 2 s of it padding), which costs half the next one, and a
#: decode's cost grows with its words. A part much shorter loses the words
#: the rest gives context to ("Ever tried." alone is "Have a tried.");
#: measured with benchmarks/v2v_bench.py (the read and passages sets).
KEEP_AFTER_BYTES = 4 * BYTES_PER_SECOND


def pause_ms(silence_ms: int) -> int:
    """When to decode early for a given endpoint silence: never later than half of it."""
    return min(PAUSE_MS, silence_ms // 2)


def decodes_at_pauses(stt: SpeechRecognizer | None) -> bool:
    """Whether ``stt`` may decode the utterance so far at each pause (a local engine)."""
    return bool(getattr(stt, "decodes_at_pauses", False))


class EarlyDecode:
    """One decode of a segment's first ``covered`` bytes (``voiced`` of them through its last
    speech), started at a pause.

    ``result`` fires with the transcript, or None when the decode failed
    (logged) or was cancelled; it never fails, so nobody has to wait on it.
    ``text`` and ``settled`` say the same to whoever reads it as it stands:
    the end-of-turn rule reads the transcript for cues (livetx.live.endpoint).
    """

    __slots__ = ("voiced", "covered", "result", "text", "settled", "_waiting")

    def __init__(self, voiced: int, covered: int) -> None:
        self.voiced = voiced
        self.covered = covered
        self.result: Deferred[str | None] = Deferred()
        self.text: str | None = None
        self.settled = False
        self._waiting: list[Deferred[str | None]] = []

    def settled_text(self) -> Deferred[str | None]:
        """Fires with ``text`` once settled; cancelling it leaves the decode alone (a chained
        decode waits on this, and may be cancelled on its own)."""
        if self.settled:
            return succeed(self.text)
        waiter: Deferred[str | None] = Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        return waiter

    def settle(self, text: str | None) -> None:
        self.text, self.settled = text, True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(text)


def decode_early(
    stt: SpeechRecognizer, pcm: bytes, voiced: int, heard: Callable[[EarlyDecode], None],
    covered: int, prefix: str | EarlyDecode = "",
) -> EarlyDecode:
    """Start decoding ``pcm`` (the segment's audio up to ``covered`` bytes, which hold ``voiced``
    bytes through its last speech); ``heard`` is told when the decode has settled (its ``text``
    None if it failed), unless it was cancelled.

    ``prefix`` is the transcript of the segment's audio before ``pcm``, which is not decoded
    again (the first half of a request the user went on with, the start of a long utterance),
    or the decode that is making it: the text is the prefix's and then ``pcm``'s words, and
    None if the prefix's decode failed."""
    early = EarlyDecode(voiced, covered)

    def joined(text: str) -> str | None | Deferred[str | None]:
        if isinstance(prefix, EarlyDecode):
            return prefix.settled_text().addCallback(lambda before: None if before is None else _join(before, text))
        return _join(prefix, text)

    def done(text: str | None) -> str | None:
        early.settle(text)
        heard(early)
        return text

    def failed(failure: Failure) -> None:
        early.settle(None)
        _failed(failure)
        if not failure.check(CancelledError):
            heard(early)

    early.result = maybeDeferred(stt.transcribe, to_wav(pcm)).addCallback(joined).addCallbacks(done, failed)
    return early


def _join(before: str, text: str) -> str:
    return " ".join(part for part in (before, text.strip()) if part)


def final_transcript(
    early: EarlyDecode | None, voiced: int, stt: SpeechRecognizer, wav: bytes,
) -> Deferred[str]:
    """The transcript of a finished segment: its early decode when that covered every voiced byte.

    Otherwise (no pause came before the endpoint, the speaker went on after
    the last one, or the decode failed) the whole segment is decoded now, as
    before; a stale early decode is cancelled so it does not hold the engine.
    """
    if early is None or early.voiced != voiced:
        if early is not None:
            early.result.cancel()
        return maybeDeferred(stt.transcribe, wav)

    def settled(text: str | None) -> str | Deferred[str]:
        return text if text is not None else maybeDeferred(stt.transcribe, wav)

    return early.result.addCallback(settled)


def _failed(failure: Failure) -> None:
    if not failure.check(CancelledError):
        _log.failure("Early transcription failed", failure)
