"""The SSE decoder must not care where the network splits the stream."""

from __future__ import annotations

import pytest

from livetx.providers.sse import SSEDecoder, SSEError, SSEEvent

STREAM = (
    ": keep-alive comment\r\n"
    "event: note\r\n"
    "id: 7\r\n"
    "data: first line\r\n"
    "data:second line\r\n"
    "\r\n"
    'data: {"text": "héllo 你好"}\n\n'
    "data: lone cr\r\r"
    "data: [DONE]\n\n"
).encode("utf-8")

EXPECTED = [
    SSEEvent("first line\nsecond line", "note", "7"),
    SSEEvent('{"text": "héllo 你好"}', "message", "7"),
    SSEEvent("lone cr", "message", "7"),
    SSEEvent("[DONE]", "message", "7"),
]


def decode(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_whole_stream() -> None:
    assert decode([STREAM]) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_split_at_every_byte(cut: int) -> None:
    assert decode([STREAM[:cut], STREAM[cut:]]) == EXPECTED


def test_one_byte_at_a_time() -> None:
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_incomplete_event_is_held_back() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: partial\n") == []
    assert decoder.feed(b"\n") == [SSEEvent("partial")]
    assert decoder.feed(b"\n\n") == []  # blank lines alone dispatch nothing


def test_leading_bom_is_ignored_even_when_split() -> None:
    bom = "\ufeff".encode()
    assert decode([bom[:1], bom[1:] + b"data: x\n\n"]) == [SSEEvent("x")]
    assert decode([b"data: \xef\xbb\xbfx\n\n"]) == [SSEEvent("\ufeffx")]  # only at the start


def test_field_without_colon_and_unknown_fields() -> None:
    assert decode([b"data\nretry: 5\nfoo: bar\ndata: y\n\n"]) == [SSEEvent("\ny")]


def test_lines_and_events_are_capped() -> None:
    decoder = SSEDecoder(max_size=100)
    assert decoder.feed(b"data: " + b"x" * 60) == []
    with pytest.raises(SSEError, match="line longer than 100"):
        decoder.feed(b"x" * 60)  # still no newline: the line is past the cap
    many = SSEDecoder(max_size=100)
    with pytest.raises(SSEError, match="event larger than 100"):
        many.feed(b"data: " + b"y" * 40 + b"\n" + b"data: " + b"y" * 40 + b"\n" + b"data: " + b"y" * 40 + b"\n")
    assert decode([b"data: " + b"z" * 1000 + b"\n\n"]) == [SSEEvent("z" * 1000)]  # the default is larger


def test_a_long_line_arrives_whole_from_many_pieces() -> None:
    line = b"data: " + b"w" * 100_000 + b"\n\n"
    assert decode([line[i : i + 7] for i in range(0, len(line), 7)]) == [SSEEvent("w" * 100_000)]
