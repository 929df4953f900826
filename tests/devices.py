"""A xiaozhi-esp32 board as the tests' simulator: the firmware's documented protocol over a real socket.

It speaks docs/websocket.md of the firmware, written here from the document,
not with the server's modules: the four headers, ``hello``, ``listen``,
``abort``, ``mcp``, Opus in 60 ms packets framed as version 1, 2 or 3
(network byte order), sent at real time. Like the firmware in ``auto`` and
``manual`` mode it stops sending the microphone once ``tts start`` comes;
in ``realtime`` it goes on.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Callable

import av
import numpy as np
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import LoopingCall

from .support import TIMEOUT, Waiting
from .test_live_ws import eventually

FRAME_MS = 60
MIC_RATE = 16000


def opus_packets(pcm16k: bytes) -> list[bytes]:
    """16 kHz PCM16 as 60 ms Opus packets, as the firmware's encoder makes them."""
    codec: Any = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format = MIC_RATE, "mono", "s16"
    codec.options = {"frame_duration": str(FRAME_MS)}
    codec.open()
    samples = np.frombuffer(pcm16k, dtype="<i2")
    step = MIC_RATE * FRAME_MS // 1000
    samples = np.concatenate([samples, np.zeros(-len(samples) % step, dtype=np.int16)])
    packets = []
    for i in range(0, len(samples), step):
        frame = av.AudioFrame.from_ndarray(samples[i:i + step].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = MIC_RATE
        packets += [bytes(p) for p in codec.encode(frame)]
    return packets


def decode_reply(packets: list[bytes], rate: int) -> bytes:
    """The server's Opus packets as PCM16 at ``rate`` (the rate its hello announced)."""
    codec: Any = av.CodecContext.create("libopus", "r")
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    out = b""
    for packet in packets:
        for frame in codec.decode(av.Packet(packet)):
            for f in resampler.resample(frame):
                out += f.to_ndarray().astype("<i2").tobytes()
    return out


def frame(version: int, opus: bytes, timestamp: int = 0, kind: int = 0) -> bytes:
    if version == 2:
        return struct.pack("!HHIII", 2, kind, 0, timestamp, len(opus)) + opus
    if version == 3:
        return struct.pack("!BBH", kind, 0, len(opus)) + opus
    return opus


def unframe(version: int, data: bytes) -> bytes:
    if version == 2:
        _, _, _, _, size = struct.unpack_from("!HHIII", data)
        return data[16:16 + size]
    if version == 3:
        _, _, size = struct.unpack_from("!BBH", data)
        return data[4:4 + size]
    return data


SILENCE = opus_packets(b"\x00\x00" * (MIC_RATE * FRAME_MS // 1000))[0]


class Board(Waiting, WebSocketClientProtocol):
    """One board: records every message; the microphone streams while it listens."""

    binary_version = 1
    mode = "auto"

    def __init__(self) -> None:
        super().__init__()
        self.ready: Deferred[None] = Deferred()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.received: list[tuple[float, str, Any]] = []  # (time, "json" | "audio", message or packet)
        self.listening = False
        self.outbox: list[bytes] = []
        self.mic_on_while_speaking = False
        self.sent_ms = 0
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        #: The board's own MCP tools: name → (description, inputSchema, what a call answers; None: not yet).
        self.tools: dict[str, tuple[str, dict[str, Any], Callable[[dict[str, Any]], str | None]]] = {}
        self.tool_calls: list[dict[str, Any]] = []
        #: ``tools/call`` requests not answered yet (their tool said None), for :meth:`answer_held`.
        self.held: list[dict[str, Any]] = []

    def onOpen(self) -> None:
        self.ready.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        now = reactor.seconds()
        if isBinary:
            self.received.append((now, "audio", unframe(self.binary_version, payload)))
        else:
            message = json.loads(payload)
            self.received.append((now, "json", message))
            if message.get("type") == "mcp":
                self._mcp(message["payload"])
            if message.get("type") == "tts" and message.get("state") == "start" and self.mode != "realtime":
                self.listening = False  # the firmware stops the microphone while it speaks
        self._wake()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code, self.close_reason = code, reason
        if self._loop.running:
            self._loop.stop()
        if not self.ready.called:
            self.ready.callback(None)
        self._wake()

    def _mcp(self, request: dict[str, Any]) -> None:
        """Answer as the firmware's MCP server does (docs/mcp-protocol.md)."""
        method, ident = request.get("method"), request.get("id")
        if method == "initialize":
            result: Any = {"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                           "serverInfo": {"name": "bread-compact-wifi", "version": "1.8.2"}}
        elif method == "tools/list":
            result = {"tools": [{"name": n, "description": d, "inputSchema": s} for n, (d, s, _) in self.tools.items()]}
        elif method == "tools/call":
            self.tool_calls.append(request["params"])
            answer = self.tools[request["params"]["name"]][2](request["params"]["arguments"])
            if answer is None:  # a slow device: answered later, if at all
                self.held.append(request)
                return
            result = self._tool_result(answer)
        else:
            return
        self._answer(ident, result)

    @staticmethod
    def _tool_result(text: str) -> dict[str, Any]:
        return {"content": [{"type": "text", "text": text}], "isError": False}

    def _answer(self, ident: Any, result: Any) -> None:
        self.send_json({"session_id": self.session_id, "type": "mcp",
                        "payload": {"jsonrpc": "2.0", "id": ident, "result": result}})

    def answer_held(self, text: str) -> None:
        """Answer the ``tools/call`` requests held so far, late."""
        held, self.held = self.held, []
        for request in held:
            self._answer(request["id"], self._tool_result(text))

    def send_json(self, message: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(message).encode())

    def hello(self, mcp: bool = False) -> None:
        self.send_json({"type": "hello", "version": self.binary_version, "features": {"mcp": mcp}, "transport": "websocket",
                        "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}})

    def listen(self, state: str, mode: str | None = None) -> None:
        self.mode = mode or self.mode
        message = {"session_id": self.session_id, "type": "listen", "state": state, "mode": self.mode}
        self.send_json(message)
        if state == "start":
            self.listening = True
            if not self._loop.running:
                self._loop.start(FRAME_MS / 1000, now=False)
        elif state == "stop":
            self.listening = False

    def say(self, pcm16k: bytes, trailing_ms: int = 900) -> None:
        self.outbox += opus_packets(pcm16k) + [SILENCE] * (trailing_ms // FRAME_MS)

    def _tick(self) -> None:
        if not self.listening:
            return
        packet = self.outbox.pop(0) if self.outbox else SILENCE
        self.sendMessage(frame(self.binary_version, packet, self.sent_ms), isBinary=True)
        self.sent_ms += FRAME_MS
        self._wake()

    @property
    def session_id(self) -> str:
        hello = self.messages("hello")
        return str(hello[0].get("session_id", "")) if hello else ""

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [m for _, k, m in self.received if k == "json" and m.get("type") == kind]

    def events(self) -> list[str]:
        """The order of what came: ``stt``, ``tts:start``, ``tts:sentence_start``, ``audio``, ``tts:stop``…"""
        out: list[str] = []
        for _, k, m in self.received:
            name = "audio" if k == "audio" else m["type"] + (f":{m['state']}" if "state" in m else "")
            if not (name == "audio" and out and out[-1] == "audio"):
                out.append(name)
        return out

    def audio(self) -> list[bytes]:
        return [m for _, k, m in self.received if k == "audio"]


async def connect(url: str, headers: dict[str, str], version: int = 1) -> Board:
    factory = WebSocketClientFactory(url, headers=headers)
    factory.protocol = Board
    endpoint = TCP4ClientEndpoint(reactor, factory.host, factory.port, timeout=5)
    board: Board = await endpoint.connect(factory)
    board.binary_version = version
    await board.ready.addTimeout(TIMEOUT, reactor)
    return board


async def tools_taken(server: Any, board: Board) -> None:
    """Once ``board`` has answered ``tools/list`` and the server has read that answer (nothing it asked of a
    board still waits): its tools are the model's. A wait on that, not a sleep a loaded machine can outlast."""
    await board.wait(lambda: any(m["payload"].get("method") == "tools/list" for m in board.messages("mcp")))
    sockets = server.service.getServiceNamed("connections")._open
    await eventually(lambda: all(not p.device_tools._pending for p in sockets if getattr(p, "device_tools", None)))
