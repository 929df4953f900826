"""When an utterance ends: after a set silence, or sooner when what was said sounds finished.

``end_of_turn`` picks the rule, ``eagerness`` its waits (as OpenAI's
``semantic_vad`` does: ``high`` answers soonest and cuts slow speakers off
most, ``low`` lets them think longest):

- ``silence``: ``silence_ms`` of silence ends every utterance, whatever was said.
- ``transcript``: the transcript of the utterance so far, decoded at the
  first short pause (:mod:`livetx.live.streaming_stt`), is read for cues.
  One that ends a sentence ("... at seven.") ends the utterance after the
  short wait; one that ends on a word nobody stops on (a conjunction, a
  preposition, an article, a filler: "... a table for") waits up to the
  longest silence; with no cue either way, ``silence_ms`` ends it as before.
  It costs nothing: that decode is the final transcript anyway, so an
  utterance whose decode is still running waits for it (at most the longest
  silence) rather than end without a cue: the reply would wait for it too.
- ``semantic``: the end-of-turn model (:class:`livetx.providers.base.TurnEndModel`,
  Smart Turn) is asked at the first short pause whether the speaker sounds
  done. The transcript's cues come first: an unfinished one overrides the
  model's "done", a finished one its "not yet" (the model misjudges flat
  synthetic voices); with no cue the model decides, and a turn it judged
  unfinished waits up to the longest silence.

A verdict or a transcript counts only if nothing was said since it was made.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.live.settings import Settings
from livetx.providers.base import TurnEndModel
from livetx.providers.smart_turn import WINDOW_SAMPLES

_log = Logger()

#: Eagerness → (the pause after which a finished request ends, and the model
#: is asked; the longest silence, which ends an unfinished one), in ms. The
#: pauses are no shorter than the early decode's
#: (livetx.live.streaming_stt.PAUSE_MS), so the transcript is under way when
#: the turn ends.
EAGERNESS = {"high": (160, 1000), "medium": (200, 2000), "low": (320, 4000)}
#: Above this probability the speaker is done (the model's own cut).
THRESHOLD = 0.5

#: What the transcript says about the utterance so far.
COMPLETE, UNFINISHED = "complete", "unfinished"
#: Words a request does not end on (English): conjunctions, prepositions
#: (not the particles a request may end on: "turn it on", "pick me up"),
#: articles and possessives, fillers. Words that end sentences as often
#: ("I think so", "call her", "seen it before") are left out.
CONTINUING = frozenset("""
    and but or nor because if unless until while whereas although than whether
    for to of at with from by into onto toward towards about across against among between
    through during without within under via per like
    a an the my your his its our their
    um umm uh uhm er erm hmm mm
""".split())
#: Endings that trail off: a comma, an ellipsis, a dash.
_TRAILING = (",", "...", "\u2026", "-", "\u2014")
#: Endings of a sentence.
_FINAL = (".", "?", "!")


def cue(text: str | None) -> str | None:
    """What the transcript so far says: ``COMPLETE``, ``UNFINISHED``, or None (no cue either way).

    A question mark always ends a request ("what is it for?"); otherwise a
    last word from :data:`CONTINUING` or a trailing comma or ellipsis is
    unfinished, and a full stop or exclamation mark complete. Whisper
    punctuates; a transcript without punctuation gives a cue only by its last word.
    """
    text = (text or "").strip()
    if not text or text.endswith("?"):
        return COMPLETE if text else None
    words = text.lower().split()
    if words[-1].strip(".,!;:\"'\u2026-\u2014") in CONTINUING or text.endswith(_TRAILING):
        return UNFINISHED
    return COMPLETE if text.endswith(_FINAL) else None


class EndOfTurn:
    """One connection's rule for when an utterance ends (``end_of_turn`` and ``eagerness``)."""

    __slots__ = ("rule", "pause_ms", "longest_ms", "silence_ms")

    def __init__(self, settings: Settings, transcribes_at_pauses: bool = True) -> None:
        # Without a transcript at the pause (a recognizer paid per call) there is nothing to read.
        self.rule = "silence" if settings.end_of_turn == "transcript" and not transcribes_at_pauses \
            else settings.end_of_turn
        self.pause_ms, self.longest_ms = EAGERNESS[settings.eagerness]
        self.silence_ms = settings.silence_ms

    @property
    def detector_silence_ms(self) -> int:
        """The silence after which the voice detector ends speech on its own: the longest any cue may wait."""
        if self.rule == "silence":
            return self.silence_ms
        if self.rule == "transcript":
            return max(self.silence_ms, self.longest_ms)
        return self.longest_ms

    def wait_ms(self, text: str | None, decoding: bool, model_done: bool) -> int:
        """The silence after the speech that ends the utterance, as far as is known now.

        ``text`` is the transcript of all the speech so far (None: none yet),
        ``decoding`` whether that transcript is still being made, and
        ``model_done`` whether the end-of-turn model judged the speaker done.
        Asked again as the silence grows and whenever one of them changes.
        """
        said = cue(text)
        if self.rule == "silence":
            return self.silence_ms
        if said == UNFINISHED:
            return self.longest_ms
        if said == COMPLETE:
            return self.pause_ms
        if self.rule == "transcript":
            return self.detector_silence_ms if decoding else self.silence_ms
        # semantic, no cue: the model decides, but not before the transcript
        # being made could still overrule it.
        return self.pause_ms if model_done and not decoding else self.longest_ms


class TurnEnd:
    """One connection's end-of-turn model: asks it at each pause."""

    __slots__ = ("_model", "pause_ms")

    def __init__(self, model: TurnEndModel, eagerness: str) -> None:
        self._model = model
        self.pause_ms = EAGERNESS[eagerness][0]

    def ask(self, pcm: bytes, done: Callable[[], None]) -> Deferred[None]:
        """Ask about the utterance ``pcm`` (its last 8 s matter); ``done`` is called if the speaker is done."""

        def judged(probability: float) -> None:
            if probability > THRESHOLD:
                done()

        asked = self._model.complete(bytes(pcm[-2 * WINDOW_SAMPLES:]))
        return asked.addCallbacks(judged, _failed)


def _failed(failure: Failure) -> None:
    """The model could not tell: the longest silence ends the turn, as without it."""
    _log.failure("End-of-turn model failed", failure)
