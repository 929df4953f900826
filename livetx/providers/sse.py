"""An incremental Server-Sent Events decoder (the WHATWG event-stream rules).

Pure code with no I/O: bytes go in as they come off the socket, split
anywhere, and whole events come out.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Feed chunks, get the events they complete."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._pending += self._text.decode(chunk)
        if not self._started and self._pending:
            self._started = True
            self._pending = self._pending.removeprefix("\ufeff")  # one leading BOM is ignored
        events: list[SSEEvent] = []
        while True:
            cut = _line_end(self._pending)
            if cut is None:
                return events
            end, after = cut
            line, self._pending = self._pending[:end], self._pending[after:]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SSEEvent("\n".join(data), event or "message", self._id)


_EOL = re.compile(r"\r\n|\r|\n")


def _line_end(text: str) -> tuple[int, int] | None:
    """Where the first complete line ends, and where the next begins.

    A lone ``\\r`` at the very end may be the first half of ``\\r\\n``, so it
    waits for more input.
    """
    match = _EOL.search(text)
    if match is None or (match.group() == "\r" and match.end() == len(text)):
        return None
    return match.start(), match.end()
