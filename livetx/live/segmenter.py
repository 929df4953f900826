"""Cut a streamed reply into sentences for text-to-speech.

The rule is the reference's, so captions line up the same way: cut after a
run of ``. 。 ! ！ ? ？`` or newlines, and join a piece shorter than
``min_chars`` to the next one so TTS never gets a lone "Ok.". One addition:
a full stop between two digits ("3.14") is not a sentence end.
"""

from __future__ import annotations

import re

_TERMINATORS = re.compile(r"[.。!！?？\n]+")


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
