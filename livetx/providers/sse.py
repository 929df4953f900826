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


#: The longest line, and the most data in one event, a decoder takes (a model's event is a few hundred bytes).
MAX_SIZE = 1024 * 1024


class SSEError(ValueError):
    """The stream broke a limit; the response is not one to read on."""


class SSEDecoder:
    """Feed chunks, get the events they complete.

    Linear in the stream's length however it is split: each chunk is
    scanned once, and an unfinished line is kept as a list of pieces,
    joined once when its end comes. A line or an event past ``max_size``
    characters raises :class:`SSEError`.
    """

    def __init__(self, max_size: int = MAX_SIZE) -> None:
        self._max = max_size
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []
        self._pending_size = 0
        #: The last chunk ended in a CR: a LF opening the next one belongs to it.
        self._after_cr = False
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""
        self._id: str | None = None
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._text.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")  # one leading BOM is ignored
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = False
        events: list[SSEEvent] = []
        start = 0
        for end in _EOL.finditer(text):
            line = text[start : end.start()]
            if self._pending:
                self._pending.append(line)
                line = "".join(self._pending)
                self._pending, self._pending_size = [], 0
            start = end.end()
            event = self._line(line)
            if event is not None:
                events.append(event)
        if start < len(text):
            self._pending.append(text[start:])
            self._pending_size += len(text) - start
            if self._pending_size > self._max:
                raise SSEError(f"an event-stream line longer than {self._max} characters")
        elif text.endswith("\r"):
            self._after_cr = True
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
            self._data_size += len(value) + 1
            if self._data_size > self._max:
                raise SSEError(f"an event larger than {self._max} characters")
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._data_size, self._event = [], 0, ""
        if not data:
            return None
        return SSEEvent("\n".join(data), event or "message", self._id)


_EOL = re.compile(r"\r\n|\r|\n")
