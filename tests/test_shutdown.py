"""SIGTERM to a real ``twistd live``: stop accepting, let turns finish, close with 1001."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs

from livetx.audio import read_wav
from livetx.auth.keys import KeyStore
from livetx.auth.tokens import issue_token, load_or_create_secret
from livetx.lastresort import EXIT_MARGIN
from livetx.testing.recordings import read_aloud
from livetx.store.conversation import default_live_session
from livetx.store.sqlite import SQLiteStore
from livetx.web.admission import Admission
from livetx.web.connections import ConnectionTracker

from .checkout import require
from .doubles import b64
from .support import LiveClient, connect, frame_kind, open_socket
from .test_session import Harness, SlowWrites, harness_with
from .test_live_ws import LIVE, OPEN_API, kinds
from .test_twistd import TWISTD, free_port, wait_for_port

#: The offline echo model, slowed down: a turn of N words takes N × 0.05 s.
SLOW_ECHO = '[llm]\necho_delay = 0.05\n[tts]\nprovider = "none"\n[stt]\nprovider = "none"\n'


class Twistd:
    """A ``twistd -n live`` process on a free loopback port."""

    def __init__(self, tmp_path: Path, config: str) -> None:
        self.data = tmp_path / "data"
        path = tmp_path / "livetx.toml"
        path.write_text(config)
        self.log = tmp_path / "twistd.log"
        self.port = free_port()
        self.process = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "--logfile=-", "live", "--listen",
                      f"tcp:{self.port}:interface=127.0.0.1", "--data-dir", str(self.data), "--config", str(path)],
            # A file, not a pipe: a long run logs more than a pipe holds unread.
            cwd=tmp_path, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.process)
        self.terminated = False

    def url(self, path: str, username: str) -> str:
        token = issue_token(load_or_create_secret(self.data, None), username, 3600)
        return f"ws://127.0.0.1:{self.port}{path}?token={token}"

    async def client(self, username: str) -> LiveClient:
        return await connect(self.url(LIVE, username))

    def terminate(self) -> None:
        if not self.terminated:
            self.terminated = True
            self.process.send_signal(signal.SIGTERM)

    async def refuses_connections(self) -> bool:
        for _ in range(100):
            try:
                late = await open_socket(f"ws://127.0.0.1:{self.port}{LIVE}")
            except ConnectionRefusedError:
                return True
            late.transport.abortConnection()  # in before the port closed
            await deferLater(reactor, 0.02, lambda: None)
        return False

    async def seconds_to_exit(self) -> float:
        """SIGTERM now; how long the process took to exit (waited for off the reactor)."""
        started = time.monotonic()
        self.terminate()
        await deferToThread(self.process.wait, 60)
        return time.monotonic() - started

    async def finish(self) -> str:
        """Wait for the process to exit, without blocking the reactor its clients need."""
        self.terminate()
        await deferToThread(self.process.wait, 60)
        output = self.log.read_text()
        assert self.process.returncode in (0, -signal.SIGTERM), output
        assert "Traceback" not in output, output
        return output


async def stored_turn(data: Path, username: str) -> list[tuple[str, str, bool]]:
    store = SQLiteStore(data)
    try:
        messages = await store.messages(username, default_live_session(username))
    finally:
        await store.close()
    return [(m.role, m.text, m.interrupted) for m in messages]


def said(client: LiveClient) -> str:
    return "".join(f["data"]["text"] for f in client.frames if f["t"] == "bot_delta_chunk")


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_a_running_turn_finish_then_closes_with_1001(tmp_path: Path) -> None:
    server = Twistd(tmp_path, SLOW_ECHO + "[server]\nshutdown_grace = 20\n")
    words = " ".join(f"w{i}" for i in range(30))
    try:
        client = await server.client("ann")
        client.send({"t": "text_input", "text": words})
        await client.until("bot_delta_chunk")
        server.terminate()
        assert await server.refuses_connections()  # the port closed at once
        client.send({"t": "text_input", "text": "and more"})  # nothing new starts while draining
        await client.closed
    finally:
        await server.finish()
    assert said(client) == words
    assert "end" in kinds(client.frames)  # the turn finished before the close
    assert {"t": "error", "code": "PROCESSING_ERROR", "data": "server is shutting down"} in client.frames
    assert (client.close_code, client.close_reason) == (1001, "Server shutting down")
    assert await stored_turn(server.data, "ann") == [("user", words, False), ("assistant", words, False)]


@pytest_twisted.ensureDeferred
async def test_past_the_grace_period_the_partial_reply_is_stored(tmp_path: Path) -> None:
    server = Twistd(tmp_path, SLOW_ECHO + "[server]\nshutdown_grace = 0.5\n")
    words = " ".join(f"w{i}" for i in range(400))  # 20 s: far longer than the grace
    try:
        client = await server.client("bo")
        client.send({"t": "text_input", "text": words})
        await client.until("bot_delta_chunk")
        server.terminate()
        await client.closed
    finally:
        await server.finish()
    assert client.close_code == 1001 and "end" not in kinds(client.frames)
    assert kinds(client.frames)[-1] == "stop_play"  # its last event: stopped as by ``interrupt``
    partial = said(client)
    assert 0 < len(partial) < len(words) and words.startswith(partial)
    assert await stored_turn(server.data, "bo") == [("user", words, False), ("assistant", partial, True)]


async def stored_chat(data: Path) -> list[tuple[str, str, bool, str]]:
    store = SQLiteStore(data)
    try:
        sessions, _ = await store.sessions("cy", 0, 10)
        rows = [m for session in sessions for m in await store.messages("cy", session.id)]
    finally:
        await store.close()
    return [(m.role, m.text, m.interrupted, m.metrics.get("outcome", "")) for m in rows]


@pytest_twisted.ensureDeferred
async def test_past_the_grace_period_chat_and_sse_turns_are_stopped_stored_and_told(tmp_path: Path) -> None:
    server = Twistd(tmp_path, SLOW_ECHO + "[server]\nshutdown_grace = 0.5\n")
    words = " ".join(f"w{i}" for i in range(400))  # 20 s: far longer than the grace
    key = KeyStore(server.data).create(["chat"])[1]
    chunks: list[bytes] = []
    try:
        chat = await connect(f"ws://127.0.0.1:{server.port}{OPEN_API}?api_key={key}&username=cy&ct=chat")
        chat.send({"ct": "chat", "t": "send", "message": words})
        response = await treq.post(f"http://127.0.0.1:{server.port}/api/v1/chat", headers={"X-API-Key": key},
                                   json={"username": "cy", "message": words}, reactor=reactor)
        streamed = treq.collect(response, chunks.append)
        await chat.until("plain")
        while b'"plain"' not in b"".join(chunks):
            await deferLater(reactor, 0.02, lambda: None)
        server.terminate()
        await chat.closed
        await streamed  # the stream ends: the server finished the response
    finally:
        await server.finish()
    events = [json.loads(e[6:]) for e in b"".join(chunks).decode().split("\n\n") if e.startswith("data: ")]
    for got in (events, chat.frames):
        assert [frame_kind(e) for e in got][-3:] == ["message_saved", "error", "end"]
        assert got[-2]["code"] == "PROCESSING_ERROR" and got[-1]["session_id"] == got[0]["session_id"]
    assert chat.close_code == 1001
    said = sorted("".join(e["data"] for e in got if e.get("type") == "plain") for got in (events, chat.frames))
    stored = await stored_chat(server.data)
    assert sorted(text for role, text, _, _ in stored if role == "assistant") == said
    assert all(0 < len(text) < len(words) for text in said)
    assert sorted(stored) == sorted([("user", words, False, "")] * 2 + [
        ("assistant", text, True, "interrupted") for text in said])


class _Socket:
    """What the tracker needs of a socket: who it is, whether it is busy, how to stop and close it."""

    def __init__(self, busy: bool) -> None:
        self.admission = Admission(username="u")
        self.busy = busy
        self.over: Deferred[None] = Deferred()
        self.stopped = False
        self.finished: Deferred[None] = Deferred()
        self.closed_with: int | None = None
        self.listening = True

    def close_with(self, code: int, reason: str) -> None:
        self.closed_with = code

    def stop_listening(self) -> None:
        self.listening = False

    def turns_over(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.busy:
            self.over.addBoth(lambda _: d.callback(None))
        else:
            d.callback(None)
        return d

    def finish_turn(self) -> None:
        self.busy = False
        self.over.callback(None)

    def stop_turn(self) -> None:
        self.stopped = True
        if self.busy:
            self.finish_turn()  # stopped: stored, its client told


def test_draining_waits_for_busy_sockets_up_to_the_grace_period() -> None:
    clock = Clock()
    tracker = ConnectionTracker(clock, grace=5.0)
    idle, busy, stuck = _Socket(False), _Socket(True), _Socket(True)
    for socket in (idle, busy, stuck):
        tracker.add(socket)  # type: ignore[arg-type]
    done: list[object] = []
    tracker.stopService().addBoth(done.append)
    tracker.drained.addBoth(done.append)
    assert tracker.draining and idle.closed_with is None  # nobody is closed while turns run
    assert not any(s.listening for s in (idle, busy, stuck))  # nor starts a turn from speech
    clock.advance(1)
    busy.finish_turn()  # the tracker waits on the turn itself, no polling
    assert idle.closed_with is None and not stuck.stopped  # the stuck turn still has time
    clock.advance(5)
    assert stuck.stopped and not stuck.busy  # past the grace: what still runs is stopped
    assert [s.closed_with for s in (idle, busy, stuck)] == [1001, 1001, 1001]
    assert done == []  # until every socket has let go of its session
    for socket in (idle, busy, stuck):
        socket.finished.callback(None)
    assert len(done) == 2


@pytest_twisted.ensureDeferred
async def test_while_draining_interrupt_works_audio_is_dropped_and_late_sockets_go(livetx: Any) -> None:
    server = await livetx(SLOW_ECHO + "[server]\nshutdown_grace = 20\n")
    client = await connect(server.url(LIVE, token=server.token()))
    late_url = server.url(LIVE, token=server.token("late"))
    client.send({"t": "text_input", "text": " ".join(f"w{i}" for i in range(200))})
    await client.until("bot_delta_chunk")
    tracker = server.service.getServiceNamed("connections")
    tracker.draining = True  # what stopping the server sets first, before the grace period
    client.send({"t": "start_speaking"})
    for _ in range(20):  # a device streaming its microphone
        client.send({"t": "speaking_part", "data": b64(b"\0\0" * 320)})
    client.send({"t": "interrupt"})  # the user may still stop the bot
    await client.until("stop_play")
    errors = [f for f in client.frames if f["t"] == "error"]
    assert errors == [{"t": "error", "code": "PROCESSING_ERROR", "data": "server is shutting down"}]
    late = await open_socket(late_url)  # its handshake finished after the sockets were closed
    await late.closed
    assert (late.close_code, late.close_reason) == (1001, "Server shutting down")
    assert len(tracker) == 1


@pytest_twisted.ensureDeferred
async def test_sigterm_during_a_long_decode_exits_within_the_grace_period(tmp_path: Path) -> None:
    """A decode cannot be stopped, and the reactor thread joined the recognizer's thread at shutdown:
    the process outlived its grace, its ports closed, until the last resort ended it (issue 27.5)."""
    require("faster_whisper")
    read = read_aloud()
    assert read, "moonshine-voice (the recordings of people reading) is not installed"
    pcm, _ = read_wav(read[0][1])
    speech = pcm * 13  # 9.5 minutes of a person reading: a decode far longer than the grace on any machine
    server = Twistd(tmp_path, '[tts]\nprovider = "none"\n[stt]\nmax_segment_seconds = 600\n'
                              "[server]\nshutdown_grace = 1\n")
    try:
        client = await server.client("dee")
        client.send({"t": "start_speaking", "stamp": "long"})
        for i in range(0, len(speech), 64_000):  # 2 s a message: far under the rate limit
            client.send({"t": "speaking_part", "data": base64.b64encode(speech[i : i + 64_000]).decode()})
        client.send({"t": "end_speaking", "stamp": "long"})
        await client.wait(lambda: any(f["t"] == "metrics" and "stt" in f["data"] for f in client.frames), 60)
        assert not client.gone()  # the recognizer was called: its decode runs now
        await deferLater(reactor, 0.5, lambda: None)
        took = await server.seconds_to_exit()
    finally:
        output = await server.finish()
    assert "user_msg" not in kinds(client.frames)  # still decoding when the process ended
    assert took < 1 + EXIT_MARGIN, output  # not held until the last resort (or the decode's end)


class _SessionSocket(_Socket):
    """A tracked socket whose turns are a real session's (hand-driven engines, a store the test completes)."""

    def __init__(self, h: Harness) -> None:
        super().__init__(busy=False)
        self.h = h

    @property  # type: ignore[override]
    def busy(self) -> bool:
        return self.h.session.busy

    @busy.setter
    def busy(self, value: bool) -> None:
        pass

    def turns_over(self) -> Deferred[None]:
        return self.h.session.turn_over()

    def stop_turn(self) -> None:
        self.h.session.stop()


def test_the_drain_ends_as_soon_as_an_interrupted_turn_is_stored() -> None:
    """Waiters on an unwinding turn were woken while the session still said it was busy: the drain,
    which then asks again, went round in circles until Python's recursion limit (an unhandled
    ``RecursionError`` printed after the test run) and ended only by failing."""
    memory = SlowWrites()
    h = harness_with(memory)
    h.send("text_input", text="talk")
    h.llm.last.say("Half of it")
    h.send("interrupt")
    assert h.state == "interrupted"
    clock = Clock()
    tracker = ConnectionTracker(clock, grace=5.0)
    socket = _SessionSocket(h)
    tracker.add(socket)  # type: ignore[arg-type]
    drained: list[object] = []
    tracker.stopService()
    tracker.drained.addBoth(drained.append)
    socket.finished.callback(None)
    with capturedLogs() as events:
        (_, stored), = memory.writes
        stored.callback(None)  # the partial reply is stored: the session unwinds
    assert h.state == "idle" and socket.closed_with == 1001  # closed at once, not after the grace
    assert drained == [None] and clock.seconds() == 0
    assert not [e for e in events if e.get("log_failure") is not None]


def test_waiters_on_an_unwinding_turn_see_the_session_as_it_now_is() -> None:
    memory = SlowWrites()
    h = harness_with(memory)
    h.send("text_input", text="one")
    h.llm.last.say("Half")
    h.send("interrupt")
    h.send("text_input", text="two")  # queued behind the unwinding turn
    seen: list[tuple[str, bool]] = []
    h.session.turn_over().addCallback(lambda _: seen.append((h.state, h.session.turn_over().called)))
    memory.writes[0][1].callback(None)
    assert seen == [("processing", False)]  # the queued turn runs, and is waited on in its turn
    h.llm.last.say("Two.")
    h.llm.last.finish()
    h.session.turn_over().addCallback(lambda _: seen.append((h.state, h.session.busy)))
    memory.writes[1][1].callback(None)
    assert seen[1] == ("idle", False)
