"""Two claims of docs/security.md held by their mechanisms, not by timing (issue 27.17).

"Uploads are parsed off the reactor": the thread the parser runs on is
recorded. "Linear SSE decoding": the characters the decoder scans and the
pieces it joins are counted per byte fed. (How long a bystander's turn
takes meanwhile is a figure for ``benchmarks/``, not a bound for a test.)
"""

from __future__ import annotations

import threading
from typing import IO, Any, Iterator

import pytest
import pytest_twisted
from twisted.python import threadable

from livetx.providers import sse
from livetx.providers.sse import SSEDecoder, SSEEvent
from livetx.web import http_api
from livetx.web.uploads import Upload

from .test_http_api import API

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest_twisted.ensureDeferred
async def test_an_upload_is_parsed_on_a_thread_of_its_own_not_the_reactor(
    livetx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed_on: list[tuple[str, bool]] = []
    real = http_api.read_upload

    def recorded(content: IO[bytes], boundary: str, max_bytes: int) -> Upload:
        parsed_on.append((threading.current_thread().name, threadable.isInIOThread()))
        return real(content, boundary, max_bytes)

    monkeypatch.setattr(http_api, "read_upload", recorded)
    server = await livetx()
    api = API(server, "file")
    code, record = await api.call("POST", "/api/v1/file?username=ann", files={"file": ("a.png", "image/png", PNG)})
    assert code == 200 and record["mime"] == "image/png"
    [(thread, on_reactor)] = parsed_on
    assert not on_reactor and thread != threading.main_thread().name


class CountingEOL:
    """Stands in for the decoder's end-of-line pattern, counting the characters searched."""

    def __init__(self) -> None:
        self.searched = 0

    def finditer(self, text: str) -> Iterator[Any]:
        self.searched += len(text)
        return sse.re.finditer(r"\r\n|\r|\n", text)


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_sse_decoding_scans_each_character_once_and_joins_a_line_once(
    monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    counting = CountingEOL()
    monkeypatch.setattr(sse, "_EOL", counting)
    decoder = SSEDecoder()
    line = b"data: " + b"x" * 200_000
    events: list[SSEEvent] = []
    for i in range(0, len(line), piece):
        events += decoder.feed(line[i : i + piece])
        # An unfinished line waits as the pieces it came in, not re-joined chunk after chunk.
        assert len(decoder._pending) == i // piece + 1
    events += decoder.feed(b"\n\n")
    assert events == [SSEEvent("x" * 200_000)]
    assert counting.searched == len(line) + 2  # each character once, however the stream is split
