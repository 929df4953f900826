"""An incremental Server-Sent Events decoder (the WHATWG event-stream rules).

Pure code with no I/O: bytes go in as they come off the socket, split
anywhere, and whole events come out.
"""

from __future__ import annotations

import codecs
import re
from typing import NamedTuple


class SSEEvent(NamedTuple):
    """One dispatched event (a tuple: a model stream makes one per token)."""

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
        text = self._pending + self._text.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")  # one leading BOM is ignored
        events: list[SSEEvent] = []
        start = 0
        for end in _EOL.finditer(text):
            # A lone \r at the very end may be the first half of \r\n: wait.
            if end.end() == len(text) and end.group() == "\r":
                break
            event = self._line(text[start : end.start()])
            start = end.end()
            if event is not None:
                events.append(event)
        # One slice per chunk, not one per line: a chunk often holds many events.
        self._pending = text[start:]
        return events

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
