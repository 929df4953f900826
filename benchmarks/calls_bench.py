"""Phone calls: N concurrent Twilio Media Streams calls in talk mode, with real speech.

Each simulated call is a carrier as Twilio is one: it streams the caller's
line in real time (20 ms μ-law packets, silence included), plays the reply
audio it is sent at real time, and echoes each ``mark`` once the audio
before it has played. The caller asks a question (eSpeak NG speech), waits
for the whole reply to play, and asks again; the last question is asked
over the reply, to time the ``clear``. Per call level it reports:

- voice to voice: from the last audible sample of the question, as
  streamed, to the first reply audio (p50 and p95 over every turn);
- barge-in: from the start of the speech over the reply to ``clear``;
- server CPU per call-minute (from /proc), and the same beside one core;

and the largest N whose voice-to-voice p95 stays within 1.5 s. ``codec``
measures what the μ-law conversion costs per call-second, beside parsing
and Base64-decoding the same frames (the wire work no call can skip).

    python benchmarks/calls_bench.py --offline          # echo model, eSpeak NG, PocketSphinx
    python benchmarks/calls_bench.py                    # the OpenAI-compatible simulator as model, voice, STT
    python benchmarks/calls_bench.py --levels 1,2,4,8 --turns 2
    python benchmarks/calls_bench.py codec

Needs ``pip install websockets`` (the ``bench`` extra); server start-up is
``live_bench.py``'s.
"""

from __future__ import annotations

import array
import asyncio
import base64
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ladder import arguments, climb, run  # noqa: E402
from live_bench import cpu_seconds  # noqa: E402
from live_scenarios import percentile  # noqa: E402

from livetx.audio import read_wav, resample  # noqa: E402
from livetx.providers.espeak import _speak  # noqa: E402  (the engine livetx speaks with)
from livetx.telephony.codec import MULAW, AudioFormat, Inbound  # noqa: E402
from livetx.telephony.tokens import CallTokens  # noqa: E402

SECRET = "calls-bench-secret-of-at-least-32-bytes"
PACKET = 160  # 20 ms of 8 kHz μ-law
QUESTION = "what is the weather like in the kitchen today"
MULAW_8K = AudioFormat(MULAW, 8000)
MIN_SPEECH_MS = 200


def question() -> tuple[bytes, float, float]:
    """The question as μ-law 8 kHz, and where its first and last audible samples are (seconds)."""
    pcm, rate = read_wav(_speak(("en-us", 175, 50), QUESTION))
    pcm8 = resample(pcm, rate, 8000)
    audible = [i for i, s in enumerate(array.array("h", pcm8)) if abs(s) > 300]
    return MULAW_8K.to_wire(pcm8, 8000), audible[0] / 8000, (audible[-1] + 1) / 8000


class Caller:
    """One call as Twilio streams it."""

    def __init__(self, ws: Any, index: int) -> None:
        self.ws = ws
        self.sid = f"MZ{index:04d}"
        self.sequence = 0
        self.outbox = bytearray()
        self.playing_until = 0.0  # when the reply audio received so far ends playing
        self.pending: list[asyncio.TimerHandle] = []
        self.first_audio: float | None = None
        self.clear_at: float | None = None
        self.acked = 0
        self.closed = False

    async def send(self, frame: dict[str, Any]) -> None:
        self.sequence += 1
        await self.ws.send(json.dumps({**frame, "sequenceNumber": str(self.sequence)}))

    async def stream(self) -> None:
        """The line: the outbox in real time, else silence."""
        start, sent = time.perf_counter(), 0
        while not self.closed:
            piece = bytes(self.outbox[:PACKET]).ljust(PACKET, b"\xff")
            del self.outbox[:PACKET]
            sent += 1
            await self.send({"event": "media", "streamSid": self.sid, "media": {
                "track": "inbound", "chunk": str(sent), "timestamp": str(sent * 20),
                "payload": base64.b64encode(piece).decode()}})
            await asyncio.sleep(max(0.0, start + sent * 0.02 - time.perf_counter()))

    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        async for message in self.ws:
            frame = json.loads(message)
            now = time.perf_counter()
            if frame["event"] == "media":
                if self.first_audio is None:
                    self.first_audio = now
                played = len(base64.b64decode(frame["media"]["payload"])) / 8000
                self.playing_until = max(self.playing_until, now) + played
            elif frame["event"] == "mark":
                name = frame["mark"]["name"]
                self.pending.append(loop.call_at(loop.time() + max(0.0, self.playing_until - now),
                                                 self._echo, name))
            elif frame["event"] == "clear":
                self.clear_at = now
                self.playing_until = now
                for handle in self.pending:
                    handle.cancel()
                self.pending = []

    def _echo(self, name: str) -> None:
        self.acked += 1
        if not self.closed:
            asyncio.ensure_future(self.send({"event": "mark", "streamSid": self.sid, "mark": {"name": name}}))

    async def ask(self, audio: bytes, speech: tuple[float, float], over_reply: bool = False) -> float:
        """Say the question; voice to voice in ms (or, over a reply, first audible sample to ``clear``)."""
        speech_starts, speech_ends = speech
        self.first_audio = self.clear_at = None
        began = time.perf_counter() + len(self.outbox) / 8000
        self.outbox += audio
        end_of_speech = began + speech_ends
        deadline = end_of_speech + 30
        while time.perf_counter() < deadline:
            if over_reply and self.clear_at is not None:
                return (self.clear_at - began - speech_starts) * 1000
            if not over_reply and self.first_audio is not None and self.first_audio > end_of_speech:
                return (self.first_audio - end_of_speech) * 1000
            await asyncio.sleep(0.005)
        raise RuntimeError("no reply within 30 s of the end of the question")

    async def heard_out(self) -> None:
        """Wait until the reply has played (its marks came back) and a little silence."""
        while time.perf_counter() < self.playing_until + 0.8 or self.pending and any(
                not h.cancelled() and h.when() > asyncio.get_running_loop().time() for h in self.pending):
            await asyncio.sleep(0.05)


async def one_call(base: str, index: int, turns: int, audio: bytes, speech: tuple[float, float]) -> dict[str, Any]:
    tokens = CallTokens(SECRET, 60, _Clock())
    call_sid = f"CA{index:04d}"
    token = tokens.issue(f"+1555000{index:04d}", f"+1555000{index:04d}", call_sid)
    async with websockets.connect(f"{base}/telephony/twilio/stream", max_size=None) as ws:
        caller = Caller(ws, index)
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await caller.send({"event": "start", "streamSid": caller.sid, "start": {
            "streamSid": caller.sid, "callSid": call_sid, "accountSid": "AC0", "tracks": ["inbound"],
            "customParameters": {"token": token},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        listener = asyncio.ensure_future(caller.listen())
        streamer = asyncio.ensure_future(caller.stream())
        v2v: list[float] = []
        try:
            for _ in range(turns):
                v2v.append(await caller.ask(audio, speech))
                await caller.heard_out()
            v2v.append(await caller.ask(audio, speech))
            await asyncio.sleep(0.3)
            barge = await caller.ask(audio, speech, over_reply=True)
        finally:
            caller.closed = True
            streamer.cancel()
            listener.cancel()
        return {"v2v_ms": v2v, "barge_ms": barge}


class _Clock:
    def seconds(self) -> float:
        return time.time()


async def level(base: str, calls: int, turns: int, pid: int | None) -> dict[str, Any]:
    audio, starts, ends = question()
    cpu0, wall0, mine0 = (cpu_seconds(pid) if pid else 0.0), time.perf_counter(), time.process_time()
    results = await asyncio.gather(*(one_call(base, i, turns, audio, (starts, ends)) for i in range(calls)))
    wall = time.perf_counter() - wall0
    mine = time.process_time() - mine0
    cpu = (cpu_seconds(pid) - cpu0) if pid else None
    v2v = [v for r in results for v in r["v2v_ms"]]
    barge = [r["barge_ms"] for r in results]
    row: dict[str, Any] = {
        "calls": calls, "turns": len(v2v), "v2v_p50_ms": statistics.median(v2v),
        "v2v_p95_ms": percentile(v2v, 0.95), "clear_p50_ms": statistics.median(barge),
        "clear_p95_ms": percentile(barge, 0.95),
        # The detector must hear min_speech_ms (200 by default) before it may call it speech.
        "clear_after_detection_p95_ms": percentile(barge, 0.95) - MIN_SPEECH_MS,
        "call_minutes": calls * wall / 60,
        # The simulated carriers' own share of a core: near 1, the harness limits the figures.
        "harness_core_share": mine / wall,
    }
    if cpu is not None:
        row["cpu_s_per_call_minute"] = cpu / row["call_minutes"]
    return row


async def ladder(base: str, levels: list[int], turns: int, pid: int | None) -> dict[str, Any]:
    audio, starts, ends = question()
    await one_call(base, 9999, 0, audio, (starts, ends))  # warm-up: models load on first use, not counted
    return await climb(levels, lambda calls: level(base, calls, turns, pid), "calls")


def codec_cost(seconds: int = 60) -> dict[str, float]:
    """CPU per call-second: μ-law in (8 → 16 kHz) and out (22.05 kHz speech → 8 kHz μ-law),
    beside the JSON parsing and Base64 decoding of the same inbound frames."""
    audio, _, _ = question()
    line = (audio * (seconds * 8000 // len(audio) + 1))[: seconds * 8000]
    frames = [json.dumps({"event": "media", "media": {"payload": base64.b64encode(line[i:i + PACKET]).decode()}})
              for i in range(0, len(line), PACKET)]
    reply_pcm, reply_rate = read_wav(_speak(("en-us", 175, 50), "Here is a reply of a few seconds. " * 3))

    def wire() -> list[bytes]:
        return [base64.b64decode(json.loads(f)["media"]["payload"]) for f in frames]

    t0 = time.process_time()
    packets = wire()
    floor = time.process_time() - t0
    inbound = Inbound(MULAW_8K)
    t0 = time.process_time()
    for packet in packets:
        inbound.feed(packet)
    decode = time.process_time() - t0
    reply_seconds = len(reply_pcm) / 2 / reply_rate
    t0 = time.process_time()
    for _ in range(max(1, int(seconds / reply_seconds))):
        MULAW_8K.to_wire(reply_pcm, reply_rate)
    encode = (time.process_time() - t0) / (max(1, int(seconds / reply_seconds)) * reply_seconds) * seconds
    return {
        "inbound_us_per_call_second": decode / seconds * 1e6,
        "outbound_us_per_call_second": encode / seconds * 1e6,
        "wire_floor_us_per_call_second": floor / seconds * 1e6,
        "inbound_ratio_to_floor": decode / floor,
        "core_percent_per_call": (decode + encode) / seconds * 100,
    }


def main() -> None:
    parser = arguments(__doc__, "calls", "concurrent calls to try, in order",
                       "questions heard out per call, then one over the reply")
    parser.add_argument("--json", help="also write the summary to this file")
    args = parser.parse_args()
    extra = (f'[auth]\njwt_secret = "{SECRET}"\n[telephony]\ncarriers = ["twilio"]\n'
             'twilio_auth_token = "bench"\n[telephony.turn]\nsilence_ms = 500\n'
             f'min_speech_ms = {MIN_SPEECH_MS}\n')
    run(args, codec_cost, extra, lambda base, pid, levels: ladder(base, levels, args.turns, pid))


if __name__ == "__main__":
    main()
