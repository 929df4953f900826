"""Cut a streamed reply into sentences for text-to-speech.

The rule is the reference's, so captions line up the same way: cut after a
run of ``. 。 ! ！ ? ？`` or newlines, and join a piece shorter than
``min_chars`` to the next one so TTS never gets a lone "Ok.". One addition:
a full stop between two digits ("3.14") is not a sentence end.

Emoji are part of the reply (its captions and history keep them, as
AstrBot's do) but not of its speech: a synthesiser reads one as its name
or as noise. The same holds for the Markdown a hosted model writes
(``**bold**``, ``# Heading``, ``[a link](https://…)``), which a synthesiser
reads out as stars, hashes and addresses. :func:`speakable` is what TTS gets;
a sentence with nothing left to say is not synthesised at all, as
xiaozhi-esp32-server skips it.

The Markdown is taken out with patterns, not a parser: TTS gets one sentence
at a time, so a ``**`` may open in one sentence and close in the next, and a
parser would keep both halves as text. A marker counts only at a word's edge,
so ``2*3`` and ``snake_case`` are read as written.
"""

from __future__ import annotations

import re

_TERMINATORS = re.compile(r"[.。!！?？\n]+")
#: xiaozhi-esp32-server's emoji ranges (``textUtils.EMOJI_RANGES``), plus the invisible
#: characters that join or style emoji (ZWJ, variation selectors, keycap, tags) and flags.
_EMOJI = re.compile(
    "[\U0001F600-\U0001F64F\U0001F300-\U0001F5FF\U0001F680-\U0001F6FF\U0001F900-\U0001F9FF"
    "\U0001FA70-\U0001FAFF\u2600-\u26FF\u2700-\u27BF"
    "\U0001F1E6-\U0001F1FF\u200D\uFE0E\uFE0F\u20E3\U000E0020-\U000E007F]"
)
_SPACES = re.compile(r"[ \t]{2,}")
#: ``![alt](url)`` and ``[text](url)`` say their text; code spans and fences, their code.
_LINKS = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_CODE = re.compile(r"`+")
#: At a line's start: a heading's hashes, a quote's ``>``, a bullet (a numbered item keeps its number).
_LINE_MARKS = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|>[ \t]?|[-*+][ \t]+)", re.MULTILINE)
#: Emphasis (``*``, ``**``, ``_``, ``__``, ``~~``) opening before a word or closing after one.
_EMPHASIS = re.compile(r"(?<![\w*_~])(?:\*{1,3}|_{1,3}|~~)(?=[^\s*_~])|(?<=[^\s*_~])(?:\*{1,3}|_{1,3}|~~)(?![\w*_~])")


def without_emoji(text: str) -> str:
    """``text`` with its emoji and line breaks taken out: the captions xiaozhi-esp32-server sends."""
    return _EMOJI.sub("", text).replace("\n", "")


def speakable(sentence: str) -> str:
    """What TTS should say of ``sentence``: no emoji or Markdown; ``""`` when no word is left (``"😂"``, ``"!"``)."""
    plain = _EMPHASIS.sub("", _LINE_MARKS.sub("", _CODE.sub("", _LINKS.sub(r"\1", sentence))))
    spoken = _SPACES.sub(" ", _EMOJI.sub("", plain)).strip()
    return spoken if any(c.isalnum() for c in spoken) else ""


class SentenceSegmenter:
    """Feed model deltas in, get finished sentences out, in order."""

    def __init__(self, min_chars: int = 10) -> None:
        self.min_chars = min_chars
        self._buffer = ""

    def feed(self, delta: str) -> list[str]:
        """Add a delta; return the sentences it completed."""
        self._buffer += delta
        sentences: list[str] = []
        start = 0
        pending = ""
        for match in _TERMINATORS.finditer(self._buffer):
            end = match.end()
            if match.group() == "." and self._buffer[match.start() - 1 : match.start()].isdigit():
                if end == len(self._buffer):
                    break  # "3." may yet become "3.14": wait for the next delta
                if self._buffer[end].isdigit():
                    continue
            pending += self._buffer[start:end]
            start = end
            if len(pending) >= self.min_chars:
                if pending.strip():
                    sentences.append(pending.strip())
                pending = ""
        self._buffer = pending + self._buffer[start:]
        return sentences

    def flush(self) -> list[str]:
        """The model has finished: whatever is left is the last sentence."""
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []
