"""Voice devices: N simulated xiaozhi-esp32 boards talking at once, with real speech in Opus.

Each board does what the firmware does: asks the OTA endpoint (and is
approved in the registry, as ``livetx devices approve`` would), connects
with its four headers, says ``hello``, ``listen start`` in ``auto`` mode,
and streams its microphone as 60 ms Opus packets (binary version 3) in real
time, silence included; it stops the microphone on ``tts start`` and asks
again once ``tts stop`` has come and the reply has played. Per level it reports:

- voice to voice: from the last audible sample of the question, as
  streamed, to the first reply packet (p50 and p95 over every turn);
- server CPU per device-minute (from /proc);

and the largest N whose voice-to-voice p95 stays within 1.5 s. ``codec``
measures what Opus costs per device-minute (decoding the microphone,
encoding the reply), beside unframing the same packets (the floor: wire
work no board can skip).

    python benchmarks/devices_bench.py --offline          # echo model, eSpeak NG, Whisper (the defaults)
    python benchmarks/devices_bench.py --offline --sphinx # the same with PocketSphinx
    python benchmarks/devices_bench.py --levels 1,2,4,8 --turns 2
    python benchmarks/devices_bench.py codec

Needs ``pip install websockets`` (the ``bench`` extra); server start-up is
``live_bench.py``'s.
"""

from __future__ import annotations

import array
import asyncio
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ladder import arguments, climb, run  # noqa: E402
from live_bench import cpu_seconds  # noqa: E402
from live_scenarios import percentile  # noqa: E402

from livetx.audio import read_wav, resample  # noqa: E402
from livetx.devices import framing  # noqa: E402
from livetx.devices.opus import Decoder, Encoder  # noqa: E402
from livetx.devices.registry import DEVICES_FILE, DeviceRegistry  # noqa: E402
from livetx.providers.espeak import _speak  # noqa: E402  (the engine livetx speaks with)

FRAME_S = 0.06
QUESTION = "what is the weather like in the kitchen today"


def question() -> tuple[list[bytes], float]:
    """The question as 60 ms Opus packets at 16 kHz, and where its last audible sample is (seconds)."""
    pcm, rate = read_wav(_speak(("en-us", 175, 50), QUESTION))
    pcm16 = resample(pcm, rate, 16000)
    audible = [i for i, s in enumerate(array.array("h", pcm16)) if abs(s) > 300]
    return Encoder(16000).encode(pcm16, 16000), (audible[-1] + 1) / 16000


def silence() -> bytes:
    return Encoder(16000).encode(b"\x00\x00" * 960, 16000)[0]


def ota(base: str, mac: str, client: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{base}/xiaozhi/ota/", data=b"{}", method="POST", headers={
        "Device-Id": mac, "Client-Id": client, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def enrol(base: str, registry: DeviceRegistry, mac: str, client: str) -> dict[str, str]:
    """The firmware's path: a code, approved, then the WebSocket and its token."""
    registry.set_state(ota(base, mac, client)["activation"]["code"], "approved")
    socket: dict[str, str] = ota(base, mac, client)["websocket"]
    return socket


class Board:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.outbox: list[bytes] = []
        self.listening = False
        self.first_audio: float | None = None
        self.playing_until = 0.0
        self.stopped = asyncio.Event()
        self.closed = False

    async def stream(self, quiet: bytes) -> None:
        start, sent = time.perf_counter(), 0
        while not self.closed:
            if self.listening:
                packet = self.outbox.pop(0) if self.outbox else quiet
                await self.ws.send(framing.pack(3, packet))
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * FRAME_S - time.perf_counter()))

    async def listen(self) -> None:
        async for message in self.ws:
            now = time.perf_counter()
            if isinstance(message, bytes):
                if self.first_audio is None:
                    self.first_audio = now
                self.playing_until = max(self.playing_until, now) + FRAME_S
                continue
            frame = json.loads(message)
            if frame.get("type") == "tts" and frame.get("state") == "start":
                self.listening = False
            elif frame.get("type") == "tts" and frame.get("state") == "stop":
                self.stopped.set()

    async def ask(self, packets: list[bytes], speech_ends: float) -> float:
        self.first_audio = None
        self.stopped.clear()
        await self.ws.send(json.dumps({"type": "listen", "state": "start", "mode": "auto"}))
        began = time.perf_counter()
        self.outbox = list(packets)
        self.listening = True
        end_of_speech = began + speech_ends
        await asyncio.wait_for(self.stopped.wait(), 60)
        if self.first_audio is None:
            raise RuntimeError("a reply without audio")
        while time.perf_counter() < self.playing_until + 0.3:  # the board plays it out
            await asyncio.sleep(0.05)
        return (self.first_audio - end_of_speech) * 1000


async def one_board(base: str, registry: DeviceRegistry, index: int, turns: int, packets: list[bytes],
                    speech_ends: float, quiet: bytes) -> list[float]:
    mac, client = f"02:00:00:00:{index // 256:02x}:{index % 256:02x}", f"bench-{index:05d}"
    socket = await asyncio.to_thread(enrol, base.replace("ws://", "http://"), DeviceRegistry(registry.path), mac, client)
    headers = {"Authorization": f"Bearer {socket['token']}", "Protocol-Version": "3",
               "Device-Id": mac, "Client-Id": client}
    async with websockets.connect(socket["url"], additional_headers=headers, max_size=None) as ws:
        board = Board(ws)
        await ws.send(json.dumps({"type": "hello", "version": 3, "transport": "websocket", "audio_params": {
            "format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}}))
        json.loads(await ws.recv())  # the server's hello
        listener = asyncio.ensure_future(board.listen())
        streamer = asyncio.ensure_future(board.stream(quiet))
        try:
            return [await board.ask(packets, speech_ends) for _ in range(turns)]
        finally:
            board.closed = True
            streamer.cancel()
            listener.cancel()


async def ladder(base: str, data_dir: Path, levels: list[int], turns: int, pid: int) -> dict[str, Any]:
    packets, speech_ends = question()
    quiet = silence()
    registry = DeviceRegistry(data_dir / DEVICES_FILE)
    await one_board(base, registry, 9999, 1, packets, speech_ends, quiet)  # warm-up: models load on first use
    offset = 0

    async def level(devices: int) -> dict[str, Any]:
        nonlocal offset
        cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        results = await asyncio.gather(*(one_board(base, registry, offset + i, turns, packets, speech_ends, quiet)
                                         for i in range(devices)))
        offset += devices
        wall, cpu = time.perf_counter() - wall0, cpu_seconds(pid) - cpu0
        v2v = [v for r in results for v in r]
        return {"devices": devices, "turns": len(v2v), "v2v_p50_ms": statistics.median(v2v),
                "v2v_p95_ms": percentile(v2v, 0.95), "cpu_s_per_device_minute": cpu / (devices * wall / 60)}

    return await climb(levels, level, "devices")


def codec_cost(seconds: int = 60) -> dict[str, float]:
    """CPU per device-minute: Opus in (16 kHz packets → 16 kHz PCM) and out (22.05 kHz speech →
    24 kHz Opus), beside unframing the same inbound packets (version 3)."""
    packets, _ = question()
    count = int(seconds / FRAME_S)
    framed = [framing.pack(3, packets[i % len(packets)]) for i in range(count)]
    t0 = time.process_time()
    unframed = [framing.unpack(3, f).opus for f in framed]
    floor = time.process_time() - t0
    decoder = Decoder()
    t0 = time.process_time()
    for packet in unframed:
        decoder.decode(packet)
    decode = time.process_time() - t0
    reply_pcm, reply_rate = read_wav(_speak(("en-us", 175, 50), "Here is a reply of a few seconds. " * 3))
    reply_seconds = len(reply_pcm) / 2 / reply_rate
    encoder = Encoder()
    rounds = max(1, int(seconds / reply_seconds))
    t0 = time.process_time()
    for _ in range(rounds):
        encoder.encode(reply_pcm, reply_rate)
    encode = (time.process_time() - t0) / (rounds * reply_seconds) * seconds
    minute = 60 / seconds
    return {
        "decode_cpu_ms_per_device_minute": decode * minute * 1000,
        "encode_cpu_ms_per_device_minute": encode * minute * 1000,
        "unframe_floor_cpu_ms_per_device_minute": floor * minute * 1000,
        "decode_ratio_to_floor": decode / floor,
        "core_percent_per_device": (decode + encode) / seconds * 100,
    }


def main() -> None:
    parser = arguments(__doc__, "devices", "concurrent boards to try, in order", "questions per board")
    parser.add_argument("--sphinx", action="store_true", help="with --offline: PocketSphinx instead of Whisper")
    parser.add_argument("--json", help="also write the summary to this file")
    args = parser.parse_args()
    extra = "[devices]\nenabled = true\n[devices.turn]\nsilence_ms = 500\n"
    if args.sphinx:
        extra += '[stt]\nprovider = "pocketsphinx"\n'

    def ladder_of(base: str, pid: int, levels: list[int]) -> Any:
        # The server's data dir, where the registry is (live_bench keeps it in a temporary directory).
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        data_dir = Path(argv[argv.index(b"--data-dir") + 1].decode())
        return ladder(base, data_dir, levels, args.turns, pid)

    stt = "pocketsphinx" if args.sphinx else "whisper" if args.offline else "simulator"
    run(args, codec_cost, extra, ladder_of, {"stt": stt})


if __name__ == "__main__":
    main()
