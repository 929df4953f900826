"""A Live API load client on the ``websockets`` library (not the server's Autobahn).

It knows only the wire protocol (docs/protocol.md), so it measures any server
that speaks it: livetx, the reference, or another implementation. Every
figure is taken on the client's monotonic clock from the moment the last
input frame of a turn left the client (``text_input``, or ``end_speaking``
for a voice turn; ``interrupt`` for barge-in).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import resource
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

#: Frames whose first arrival a turn records, in protocol order.
MARKS = ("bot_delta_chunk", "bot_text_chunk", "response", "end")

#: 20 ms of 16 kHz mono PCM16: the frame size a microphone client sends.
FRAME_SECONDS = 0.02
SAMPLE_RATE = 16_000


class ServerError(RuntimeError):
    """The server answered a turn with an ``error`` frame."""


def raise_nofile_limit() -> int:
    """Lift this process's open-file limit to its hard limit (idle sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def speech_frames(seconds: float) -> list[str]:
    """A spoken-length tone as Base64 ``speaking_part`` payloads of 20 ms each.

    Encoded once, before timing starts: the client's own work must not show
    up as server latency.
    """
    per_frame = int(SAMPLE_RATE * FRAME_SECONDS)
    count = max(1, round(seconds / FRAME_SECONDS))
    out = []
    for f in range(count):
        samples = [int(3000 * math.sin(2 * math.pi * 220 * (f * per_frame + i) / SAMPLE_RATE))
                   for i in range(per_frame)]
        out.append(base64.b64encode(struct.pack(f"<{per_frame}h", *samples)).decode("ascii"))
    return out


@dataclass
class TurnTimes:
    """Milliseconds from the last input frame to the first of each mark."""

    marks: dict[str, float] = field(default_factory=dict)
    audio_frames: int = 0


def _is_audio(message: str | bytes, frame: dict[str, Any] | None) -> bool:
    """A ``response`` frame, or a binary message (servers that send audio as binary)."""
    return isinstance(message, bytes) or (frame is not None and frame.get("t") == "response")


def _parse(message: str | bytes) -> dict[str, Any] | None:
    if isinstance(message, bytes):
        return None
    frame = orjson.loads(message)  # the client's own parsing is part of every figure: keep it small
    return frame if isinstance(frame, dict) else None


#: Offer permessage-deflate (``benchmarks/deflate_bench.py`` turns it on; every other figure is without).
OFFER_COMPRESSION = False


async def open_socket(url: str, **options: Any) -> ClientConnection:
    """One connection with no size cap (audio frames are large), and no compression unless asked."""
    compression = "deflate" if OFFER_COMPRESSION else None
    return await connect(url, max_size=None, compression=compression, open_timeout=60, **options)


async def _until_end(ws: ClientConnection, sent: float) -> TurnTimes:
    times = TurnTimes()
    while "end" not in times.marks:
        message = await ws.recv()
        frame = _parse(message)
        kind = "response" if _is_audio(message, frame) else (frame or {}).get("t")
        if kind == "response":
            times.audio_frames += 1
        if kind in MARKS and kind not in times.marks:
            times.marks[kind] = (time.perf_counter() - sent) * 1000
        if kind == "error":
            raise ServerError(f"server error: {frame}")
    return times


async def text_turn(ws: ClientConnection, text: str) -> TurnTimes:
    """One typed turn, timed from ``text_input``."""
    sent = time.perf_counter()
    await ws.send(json.dumps({"t": "text_input", "text": text}))
    return await _until_end(ws, sent)


async def audio_turn(ws: ClientConnection, parts: list[str], stamp: str, pace: bool) -> TurnTimes:
    """One voice turn: ``start_speaking``, 20 ms ``speaking_part`` frames, ``end_speaking``.

    ``pace`` sends the frames in real time, as a microphone would.
    """
    await ws.send(json.dumps({"t": "start_speaking", "stamp": stamp}))
    started = time.perf_counter()
    for i, data in enumerate(parts):
        await ws.send(json.dumps({"t": "speaking_part", "data": data}))
        if pace:
            await asyncio.sleep(max(0.0, started + (i + 1) * FRAME_SECONDS - time.perf_counter()))
    sent = time.perf_counter()
    await ws.send(json.dumps({"t": "end_speaking", "stamp": stamp}))
    return await _until_end(ws, sent)


@dataclass
class Barge:
    """One interrupt: how long ``stop_play`` took and what leaked after it."""

    stop_play_ms: float | None
    audio_after: int
    frames_after: int


async def interrupt_turn(ws: ClientConnection, text: str, settle: float) -> Barge:
    """Start a turn, interrupt it on its first audio, then watch ``settle`` seconds.

    Any audio (or ``end``) of the interrupted turn after ``stop_play`` is a
    protocol violation; the count must stay 0.
    """
    await ws.send(json.dumps({"t": "text_input", "text": text}))
    while True:
        message = await ws.recv()
        frame = _parse(message)
        if _is_audio(message, frame):
            break
        if frame and frame.get("t") in ("end", "error"):
            raise ServerError(f"turn ended before its first audio: {frame}; slow the model down (--delay)")
    sent = time.perf_counter()
    await ws.send(json.dumps({"t": "interrupt"}))
    stop: float | None = None
    while stop is None:
        message = await asyncio.wait_for(ws.recv(), 10)
        frame = _parse(message)
        if frame and frame.get("t") == "stop_play":
            stop = (time.perf_counter() - sent) * 1000
    audio_after = frames_after = 0
    deadline = time.perf_counter() + settle
    while (left := deadline - time.perf_counter()) > 0:
        try:
            message = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        frame = _parse(message)
        frames_after += 1
        audio_after += _is_audio(message, frame)
    return Barge(stop, audio_after, frames_after)


async def hold_idle(url: str, count: int, concurrency: int = 64) -> list[ClientConnection]:
    """Open ``count`` sockets that send nothing; they still answer the server's pings.

    Opened ``concurrency`` at a time so the server's accept queue never
    overflows (a dropped SYN costs a one-second retry and skews the run).
    """
    gate = asyncio.Semaphore(concurrency)

    async def one() -> ClientConnection:
        async with gate:
            return await open_socket(url, ping_interval=None, close_timeout=1)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def close_all(sockets: list[ClientConnection], concurrency: int = 256) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(ws: ClientConnection) -> None:
        async with gate:
            await ws.close()

    await asyncio.gather(*(one(ws) for ws in sockets), return_exceptions=True)
