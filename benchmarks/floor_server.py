"""The floor: the least a Twisted + Autobahn server does for a Live API turn.

Every benchmark run measures this server first, on the same machine, with
the same client, simulator and turn shapes, so that each livetx figure can
be read as a ratio to it: a ratio holds from one machine to the next where
an absolute figure does not (a shared VM may be several times slower than
a desktop).

It does the wire work of a turn and nothing else: the same frames, in the
same number, order and size (the same JSON shapes, Base64 audio, a turn
number); one chat stream from the OpenAI-compatible simulator, its events
read with the same SSE decoder, with the conversation's history in the
request; one speech request per sentence, sent as the sentence completes
(two at a time, as livetx's default), audio forwarded in order; for a
voice turn the segment's WAV posted for transcription first; for ``interrupt`` during a turn, ``stop_play`` at
once and nothing more of that turn (its upstream requests run on unread,
where livetx closes them). Upstream
requests go through the same treq client as livetx's
(``livetx.fences.treq.make_http_client``: kept-alive pool, bodies written
with their headers), so the floor has no artifact livetx avoids, such as a
request body held back by Nagle's algorithm. Around that it is a bare
Autobahn factory on a TCP port: no HTTP site, no authentication, no store,
no state machine, no limits, no metrics, no logging. Like livetx it takes
start-up's objects out of the cycle collector's sight once running
(``gc.freeze``): otherwise every full collection walks all of Twisted and
Autobahn again, a pause that is no part of a turn's work. What livetx does beyond this is what the ratios price; what
the client library costs is in the absolute figures, recorded with the
machine's calibration.

With ``--workers N`` it is N such processes, each accepting on a socket of
its own bound to the same port with ``SO_REUSEPORT``, as ``twistd live
--workers N`` serves: the floor of what a second process buys on this
machine, measured beside livetx's own ratio (``benchmarks/workers_bench.py``).

    python benchmarks/floor_server.py --port 6186 --upstream http://127.0.0.1:8900/v1
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import signal
import socket
import subprocess
import sys
import time
import wave
from typing import Any

import orjson
import treq
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred, succeed

from livetx.cluster.workers import reuseport_sockets
from livetx.fences.treq import make_http_client
from livetx.providers.sse import SSEDecoder

SAMPLE_RATE = 16_000
#: As livetx's defaults: the system prompt, and the exchanges of history sent with each request.
SYSTEM_PROMPT = "You are a friendly voice assistant. Answer in a few short spoken sentences."
HISTORY_TURNS = 20
#: Speech requests of one turn in flight at once, as livetx's default ``[tts] concurrency``.
TTS_CONCURRENCY = 2
SENTENCE_ENDS = (".", "!", "?")


class FloorProtocol(WebSocketServerProtocol):
    """One connection: turns run one after the other, as on a livetx socket."""

    def connectionMade(self) -> None:
        super().connectionMade()
        # Autobahn means to turn Nagle's algorithm off (its tcpNoDelay option),
        # but its Twisted adapter reads the option before copying it from the
        # factory, so the call fails quietly and small frames (end) wait for a
        # delayed ACK. livetx's sockets start as Twisted HTTP connections,
        # which set it; so does the floor.
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]

    def onOpen(self) -> None:
        self.turn = 0
        self.running: set[int] = set()
        #: Interrupted turns: they run on upstream, but none of their frames is sent.
        self.silenced: set[int] = set()
        self.pcm: list[bytes] = []
        self.history: list[dict[str, str]] = []

    def send(self, frame: dict[str, Any]) -> None:
        if frame.get("turn") not in self.silenced:
            self.sendMessage(orjson.dumps(frame))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = orjson.loads(payload)
        kind = frame.get("t")
        if kind == "text_input":
            ensureDeferred(self.run_turn(str(frame.get("text", "")), "text"))
        elif kind == "start_speaking":
            self.pcm = []
        elif kind == "speaking_part":
            self.pcm.append(base64.b64decode(frame["data"]))
        elif kind == "end_speaking":
            ensureDeferred(self.voice_turn(b"".join(self.pcm)))
        elif kind == "interrupt" and self.turn in self.running and self.turn not in self.silenced:
            self.send({"t": "stop_play", "turn": self.turn})
            self.silenced.add(self.turn)

    async def voice_turn(self, pcm: bytes) -> None:
        wav = io.BytesIO()
        with wave.open(wav, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(pcm)
        wav.seek(0)
        upstream: Upstream = self.factory.upstream
        response = await upstream.http.post(
            upstream.url("/audio/transcriptions"), headers=upstream.headers,
            data={"model": "whisper-1"}, files={"file": ("audio.wav", "audio/wav", wav)},
        )
        text = orjson.loads(await response.content())["text"]
        await self.run_turn(text, "audio")

    async def run_turn(self, text: str, input_type: str) -> None:
        self.turn += 1
        self.running.add(self.turn)
        turn, upstream, clock = self.turn, self.factory.upstream, time.monotonic
        started = clock()
        self.send({"t": "metrics", "data": {"input_type": input_type}, "turn": turn})
        self.send({"t": "user_msg", "data": {"text": text, "ts": int(time.time() * 1000)}, "turn": turn})
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *self.history,
                    {"role": "user", "content": text}]
        response = await upstream.post_json(
            "/chat/completions", {"model": "sim", "messages": messages, "stream": True})
        decoder, reply, sentence = SSEDecoder(), [], [""]
        spoken: Deferred[Any] = succeed(None)
        speaking = DeferredSemaphore(TTS_CONCURRENCY)
        first_audio: list[float] = []

        def speak(words: str) -> None:
            nonlocal spoken
            audio = speaking.run(
                lambda: upstream.post_json("/audio/speech", {"model": "tts-1", "input": words, "voice": "alloy",
                                                             "response_format": "wav"}).addCallback(treq.content))

            def forward(wav: bytes) -> None:
                first_audio.append(clock())
                self.send({"t": "bot_text_chunk", "data": {"text": words}, "turn": turn})
                self.send({"t": "response", "data": base64.b64encode(wav).decode("ascii"), "turn": turn})

            spoken = spoken.addCallback(lambda _: audio.addCallback(forward))

        done: Deferred[None] = Deferred()

        def on_chunk(chunk: bytes) -> None:
            for event in decoder.feed(chunk):
                if event.data == "[DONE]":
                    # The reply is complete here, as livetx takes it: the body's
                    # last chunk may come a delayed ACK later (the simulator's
                    # small final write waits on Nagle's algorithm).
                    if not done.called:
                        done.callback(None)
                    continue
                delta = orjson.loads(event.data)["choices"][0]["delta"].get("content")
                if not delta:
                    continue
                reply.append(delta)
                self.send({"t": "bot_delta_chunk", "data": {"text": delta}, "turn": turn})
                sentence[0] += delta
                if sentence[0].rstrip().endswith(SENTENCE_ENDS):
                    speak(sentence[0].strip())
                    sentence[0] = ""

        treq.collect(response, on_chunk).addBoth(lambda _: None if done.called else done.callback(None))
        await done
        if sentence[0].strip():
            speak(sentence[0].strip())
        streamed = clock()
        self.send({"t": "metrics", "data": {"llm_ttft": streamed - started, "llm_total_time": streamed - started,
                                            "chat_model": "sim"}, "turn": turn})
        await spoken
        spoken_at = clock()
        self.send({"t": "metrics", "data": {"speak_to_first_frame": (first_audio or [spoken_at])[0] - started},
                   "turn": turn})
        self.send({"t": "metrics", "data": {"tts_first_frame_time": spoken_at - streamed,
                                            "tts_total_time": spoken_at - streamed, "tts": "openai_tts_api"},
                   "turn": turn})
        self.send({"t": "metrics", "data": {"wav_to_tts_total_time": spoken_at - started}, "turn": turn})
        self.send({"t": "end", "turn": turn})
        self.history = [*self.history, {"role": "user", "content": text},
                        {"role": "assistant", "content": "".join(reply)}][-2 * HISTORY_TURNS:]
        self.running.discard(turn)


class Upstream:
    """The simulator, through livetx's treq client."""

    def __init__(self, reactor: Any, base_url: str) -> None:
        self.http, _ = make_http_client(reactor)
        self.base_url = base_url.rstrip("/")
        self.headers: dict[bytes | str, bytes | str] = {"Authorization": "Bearer floor"}

    def url(self, path: str) -> str:
        return self.base_url + path

    def post_json(self, path: str, body: dict[str, Any]) -> Deferred[Any]:
        """JSON encoded with orjson, as livetx's providers do."""
        return self.http.post(self.url(path), data=orjson.dumps(body),
                              headers={**self.headers, "Content-Type": "application/json"})


def floor_factory(reactor: Any, upstream: str) -> WebSocketServerFactory:
    """The floor's WebSocket factory, its turns served by the simulator at ``upstream``."""
    factory = WebSocketServerFactory()
    factory.protocol = FloorProtocol
    factory.upstream = Upstream(reactor, upstream)  # type: ignore[attr-defined]
    return factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the simulator's base URL, e.g. http://127.0.0.1:8900/v1")
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes, each accepting on its own SO_REUSEPORT socket on the port")
    parser.add_argument("--reuse-port", action="store_true", help="(a worker) listen with SO_REUSEPORT")
    args = parser.parse_args()
    if args.workers > 1:
        supervise(args.workers, [sys.argv[0], "--port", str(args.port), "--upstream", args.upstream,
                                 "--backlog", str(args.backlog), "--reuse-port"])
        return
    from twisted.internet import reactor as installed

    reactor: Any = installed
    factory = floor_factory(reactor, args.upstream)
    if args.reuse_port:
        # livetx's own way to make the sockets: the floor and the workers differ in nothing else.
        held, = reuseport_sockets(IPv4Address("TCP", "127.0.0.1", args.port), "inet", args.backlog, 1)
        reactor.adoptStreamPort(held.fd, socket.AF_INET, factory)
        held.close()  # the reactor listens on a copy
    else:
        reactor.listenTCP(args.port, factory, backlog=args.backlog, interface="127.0.0.1")
    gc.collect()
    gc.freeze()
    reactor.run()


def supervise(count: int, argv: list[str]) -> None:
    """Run ``count`` floor workers until SIGTERM, then stop them (their CPU counts as the supervisor's tree)."""
    workers = [subprocess.Popen([sys.executable, *argv]) for _ in range(count)]

    def stop(signum: int, frame: Any) -> None:
        for worker in workers:
            worker.terminate()

    signal.signal(signal.SIGTERM, stop)
    for worker in workers:
        worker.wait()


if __name__ == "__main__":
    main()
