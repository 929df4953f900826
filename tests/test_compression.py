"""permessage-deflate: off by default, small windows when on, and no bomb inflated (issue 27, item 21)."""

from __future__ import annotations

import tracemalloc
import zlib
from typing import Any

import pytest_twisted
from autobahn.websocket.compress import (
    PerMessageDeflate,
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet import reactor

from livetx.web.sockets import DEFLATE_MEM_LEVEL, DEFLATE_WINDOW_BITS, accept_deflate

from .support import connect, replied
from .test_live_ws import LIVE

#: What a browser offers: permessage-deflate, letting the server bound the client's window.
OFFER = {
    "perMessageCompressionOffers": [PerMessageDeflateOffer(accept_max_window_bits=True)],
    "perMessageCompressionAccept": lambda response: (
        PerMessageDeflateResponseAccept(response) if isinstance(response, PerMessageDeflateResponse) else None),
}
COMPRESSED = "[server]\ncompression = true\nmax_message_bytes = 1048576\n"


def deflate(client: Any) -> PerMessageDeflate | None:
    used = [e for e in client.websocket_extensions_in_use if isinstance(e, PerMessageDeflate)]
    return used[0] if used else None


@pytest_twisted.ensureDeferred
async def test_compression_is_off_unless_turned_on(livetx: Any) -> None:
    server = await livetx()
    client = await connect(server.url(LIVE, token=server.token()), **OFFER)
    assert deflate(client) is None and replied(await client.turn("plain"))
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_compression_on_small_windows_both_ways(livetx: Any) -> None:
    server = await livetx(COMPRESSED)
    client = await connect(server.url(LIVE, token=server.token()), **OFFER)
    used = deflate(client)
    assert used is not None
    assert used.client_max_window_bits == DEFLATE_WINDOW_BITS  # the server asked the client's window down
    frames = await client.turn("compressed " * 50)
    said = "".join(f["data"]["text"] for f in frames if f["t"] == "bot_delta_chunk")
    assert replied(frames) and said.split() == ["compressed"] * 50  # the echo model, inflated whole
    await client.close_and_wait()


def test_the_server_compresses_on_small_windows_whatever_the_offer() -> None:
    """The server may compress on a smaller window than it announces; it never goes above one asked for."""
    plain = accept_deflate([PerMessageDeflateOffer(accept_max_window_bits=False)])
    assert plain is not None and (plain.window_bits, plain.mem_level, plain.request_max_window_bits) == (
        DEFLATE_WINDOW_BITS, DEFLATE_MEM_LEVEL, 0)  # the client did not let us bound its window
    bounded = accept_deflate([PerMessageDeflateOffer(accept_max_window_bits=True, request_max_window_bits=9)])
    assert bounded is not None and (bounded.window_bits, bounded.request_max_window_bits) == (9, DEFLATE_WINDOW_BITS)
    assert accept_deflate([]) is None


def bomb(inflated: int) -> bytes:
    """A permessage-deflate payload of ``inflated`` zero bytes, made without holding them (RFC 7692 7.2.1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -DEFLATE_WINDOW_BITS)
    chunk = bytes(1 << 20)
    data = b"".join(compressor.compress(chunk) for _ in range(inflated >> 20))
    data += compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


@pytest_twisted.ensureDeferred
async def test_a_compression_bomb_is_closed_with_1009_and_never_inflated_in_full(livetx: Any) -> None:
    """64 MiB of zeros in 64 KiB on the wire, against a 1 MiB message limit."""
    server = await livetx(COMPRESSED)
    client = await connect(server.url(LIVE, token=server.token()), **OFFER)
    payload = bomb(64 << 20)
    assert len(payload) < 128 << 10
    tracemalloc.start()
    try:
        client.sendFrame(opcode=1, payload=payload, rsv=4)  # RSV1: compressed
        await client.closed.addTimeout(10, reactor)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert client.close_code == 1009
    assert peak < 8 << 20, peak  # at most the limit's worth inflated, not 64 MiB


@pytest_twisted.ensureDeferred
async def test_audio_is_sent_uncompressed_and_text_compressed(livetx: Any) -> None:
    """Base64 audio gains little from deflate and costs most of its CPU (benchmarks/RESULTS.md)."""
    server = await livetx(COMPRESSED)  # the default speech engine: eSpeak NG, `response` frames
    client = await connect(server.url(LIVE, token=server.token()), **OFFER)
    compressed: list[tuple[str, bool]] = []
    record = client.onMessage

    def on_message(payload: bytes, is_binary: bool) -> None:
        record(payload, is_binary)
        # Autobahn's flag for the message just read: its first frame had RSV1 set.
        compressed.append((client.frames[-1]["t"], client._isMessageCompressed))

    client.onMessage = on_message  # type: ignore[method-assign]
    assert replied(await client.turn("say something short"))
    assert {kind for kind, deflated in compressed if not deflated} == {"response"}
    assert {"user_msg", "bot_delta_chunk"} <= {kind for kind, deflated in compressed if deflated}
    await client.close_and_wait()
