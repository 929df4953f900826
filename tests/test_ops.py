"""Operations: Prometheus metrics told by the turns, liveness and readiness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from livetx.chat.service import ChatRequest, ChatService
from livetx.domain import Engines
from livetx.live.session import LiveSession
from livetx.metrics import ServerMetrics
from livetx.providers.base import LLMError
from livetx.store.sqlite import SQLiteStore
from livetx.web import pages

from .doubles import ManualSTT, ManualTTS, ScriptedLLM, b64
from .support import connect, open_socket
from .test_chat import chat_client, send
from .test_http_api import API
from .test_live_ws import LIVE, OPEN_API, openai_config
from .test_twistd import free_port


def sample(metrics: ServerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class Observed:
    """A real session on a fake clock reporting to a TurnObserver (its error frames included)."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.metrics = ServerMetrics()
        self.llm = ScriptedLLM()
        self.tts = ManualTTS()
        self.stt = ManualSTT()
        self.observer = self.metrics.opened(LIVE, "live", "alice")
        self.frames: list[dict[str, Any]] = []
        self.session = LiveSession(
            username="alice", engines=Engines(llm=self.llm, tts=self.tts, stt=self.stt),
            clock=self.clock, emit=self.sent, listener=self.observer,
        )

    def sent(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)


def test_a_turns_latencies_come_from_its_events() -> None:
    o = Observed()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        o.session.receive({"t": "text_input", "text": "a private question"})
        o.clock.advance(0.2)
        o.llm.last.say("Hello there. ")
        o.clock.advance(0.3)
        o.tts.finish(0)
        o.llm.last.finish()  # recorded at once: no waiting for a frame after ``end``
    finally:
        globalLogPublisher.removeObserver(events.append)
    m = o.metrics
    assert sample(m, "livetx_turns_total", input_type="text", outcome="ok") == 1
    assert sample(m, "livetx_turn_first_delta_seconds_sum", input_type="text") == 0.2
    assert sample(m, "livetx_turn_first_audio_seconds_sum", input_type="text") == 0.5
    assert sample(m, "livetx_turn_seconds_sum", input_type="text") == 0.5
    assert sample(m, "livetx_turn_first_audio_seconds_bucket", input_type="text", le="0.25") == 0
    assert sample(m, "livetx_turn_first_audio_seconds_bucket", input_type="text", le="0.5") == 1
    assert sample(m, "livetx_provider_seconds_sum", kind="llm", provider="scripted-model", stage="first") == 0.2
    assert sample(m, "livetx_provider_seconds_count", kind="tts", provider="manual_tts", stage="total") == 1
    (turn,) = [e for e in events if e.get("livetx_event") == "turn"]
    assert turn["outcome"] == "ok" and turn["username"] == "alice"
    assert turn["first_delta"] == 0.2 and turn["end"] == 0.5
    assert turn["metrics"]["wav_to_tts_total_time"] == 0.5 and turn["metrics"]["chat_model"] == "scripted-model"
    assert "private" not in repr(turn)


def test_interrupts_failures_and_error_codes() -> None:
    o = Observed()
    o.session.receive({"t": "text_input", "text": "one"})
    o.llm.last.say("Partial")
    o.session.receive({"t": "interrupt"})
    o.session.receive({"t": "text_input", "text": "two"})
    o.llm.last.done.errback(LLMError("upstream said 500"))
    o.session.receive({"t": "speaking_part", "data": b64(b"\0\0")})  # no segment open
    o.clock.advance(0)
    m = o.metrics
    assert sample(m, "livetx_interrupts_total") == 1
    assert sample(m, "livetx_turns_total", input_type="text", outcome="interrupted") == 1
    assert sample(m, "livetx_turns_total", input_type="text", outcome="failed") == 1
    assert sample(m, "livetx_errors_total", code="LLM_ERROR") == 1
    assert sample(m, "livetx_errors_total", code="INVALID_STATE") == 1
    assert sample(m, "livetx_provider_failures_total", kind="llm") == 1
    assert sample(m, "livetx_turn_seconds_count", input_type="text") == 1  # only the one that ended
    o.observer.closed()
    assert sample(m, "livetx_open_connections", endpoint=LIVE) == 0


def test_transcription_latency_and_an_empty_transcript() -> None:
    o = Observed()
    for transcript, seconds in (("hello", 0.4), ("", 0.1)):
        o.session.receive({"t": "start_speaking"})
        o.session.receive({"t": "speaking_part", "data": b64(b"\1\0" * 160)})
        o.session.receive({"t": "end_speaking", "stamp": "s"})
        o.clock.advance(seconds)
        o.stt.requests[-1][1].callback(transcript)
        if transcript:
            o.llm.last.finish()
        o.clock.advance(0)
    m = o.metrics
    assert sample(m, "livetx_provider_seconds_count", kind="stt", provider="manual_stt", stage="total") == 2
    assert sample(m, "livetx_provider_seconds_sum", kind="stt", provider="manual_stt", stage="total") == 0.5
    assert sample(m, "livetx_turns_total", input_type="audio", outcome="ok") == 2


async def get(server: Any, path: str) -> tuple[int, str, str]:
    response = await treq.get(f"http://127.0.0.1:{server.port}{path}", reactor=reactor)
    body = (await treq.content(response)).decode()
    return response.code, response.headers.getRawHeaders(b"content-type", [b""])[0].decode(), body


def families(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


@pytest_twisted.ensureDeferred
async def test_metrics_endpoint_counts_each_server_on_its_own(livetx: Any) -> None:
    server, other = await livetx(), await livetx()
    client = await connect(server.url(LIVE, token=server.token()))
    await client.turn("hello")
    client.send({"t": "no_such_frame"})
    await client.until("error")
    refused = await open_socket(server.url(OPEN_API, username="x", api_key="abk_wrong"))
    await refused.closed
    await client.close_and_wait()
    code, kind, text = await get(server, "/metrics")
    assert code == 200 and kind.startswith("text/plain")
    seen = families(text)
    assert seen[("livetx_connections_total", (("endpoint", LIVE), ("mode", "live")))] == 1
    assert seen[("livetx_open_connections", (("endpoint", LIVE),))] == 0
    assert seen[("livetx_connections_closed_total", (("endpoint", LIVE), ("mode", "live")))] == 1
    assert seen[("livetx_turns_total", (("input_type", "text"), ("outcome", "ok")))] == 1
    assert seen[("livetx_turn_first_delta_seconds_count", (("input_type", "text"),))] == 1
    assert seen[("livetx_turn_first_audio_seconds_count", (("input_type", "text"),))] == 1
    assert seen[("livetx_errors_total", (("code", "UNKNOWN_MESSAGE_TYPE"),))] == 1
    assert seen[("livetx_connections_refused_total", (("endpoint", OPEN_API),))] == 1
    _, _, untouched = await get(other, "/metrics")
    assert "livetx_turns_total{" not in untouched and "livetx_connections_total{" not in untouched


@pytest_twisted.ensureDeferred
async def test_healthz_and_readyz(livetx: Any, openai: Any) -> None:
    offline = await livetx()
    assert (await get(offline, "/healthz"))[0] == 200
    code, _, body = await get(offline, "/readyz")
    assert code == 200 and '"status": "ready"' in body and '"provider": "espeak"' in body

    reachable = await livetx(openai_config(openai.base_url))
    code, _, body = await get(reachable, "/readyz")
    assert code == 200, body
    assert f'"upstream": "127.0.0.1:{openai.base_url.split(":")[2].split("/")[0]}"' in body
    assert "sk-test-secret" not in body

    closed = f"http://127.0.0.1:{free_port()}/v1"
    unreachable = await livetx(openai_config(closed, tts=False))
    code, _, body = await get(unreachable, "/readyz")
    assert code == 503 and '"status": "unready"' in body and "cannot connect to 127.0.0.1" in body
    assert openai.requests_to("/chat/completions") == []  # a probe sends no request


@pytest_twisted.ensureDeferred
async def test_sockets_at_sub_paths_add_no_metric_series(livetx: Any) -> None:
    """The socket resource is a leaf, so any sub-path reaches it: labels must not follow the path."""
    server = await livetx()
    accepted = await connect(server.url(f"{LIVE}/junk-one", token=server.token()))
    await accepted.close_and_wait()
    for junk in ("junk-two", "junk-three/deeper"):
        refused = await open_socket(server.url(f"{LIVE}/{junk}", token="not-a-token"))
        await refused.closed
    _, _, text = await get(server, "/metrics")
    assert "junk" not in text
    seen = families(text)
    assert seen[("livetx_connections_total", (("endpoint", LIVE), ("mode", "live")))] == 1
    assert seen[("livetx_connections_refused_total", (("endpoint", LIVE),))] == 2


class _Counting(Factory):
    """A TCP listener that only counts the connections made to it."""

    protocol = Protocol
    made = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        self.made += 1
        return super().buildProtocol(addr)


@pytest_twisted.ensureDeferred
async def test_readyz_reuses_its_probe_and_is_unready_while_draining(livetx: Any) -> None:
    upstream = _Counting()
    port = reactor.listenTCP(0, upstream, interface="127.0.0.1")
    try:
        server = await livetx(openai_config(f"http://127.0.0.1:{port.getHost().port}/v1"))
        answers = await DeferredList([Deferred.fromCoroutine(get(server, "/readyz")) for _ in range(5)])
        assert [a[1][0] for a in answers] == [200] * 5
        probes = upstream.made
        assert 0 < probes <= 3  # one probe in flight: one connection per engine at most
        for _ in range(5):
            assert (await get(server, "/readyz"))[0] == 200
        assert upstream.made == probes  # answered from the cache
        server.service.getServiceNamed("connections").draining = True
        code, _, body = await get(server, "/readyz")
        assert code == 503 and '"status": "draining"' in body
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_chat_turns_on_a_socket_and_over_sse_report_like_live_ones(livetx: Any, openai: Any) -> None:
    openai.reply = "Four."
    server = await livetx(openai_config(openai.base_url, tts=False))
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        client = await chat_client(server)
        send(client, "2+2?")
        await client.until("end")
        client.send({"ct": "chat", "t": "no_such_frame"})
        await client.until("error")
        await API(server).chat(username="bob", message="3+1?")
        await client.close_and_wait()
    finally:
        globalLogPublisher.removeObserver(events.append)
    _, _, text = await get(server, "/metrics")
    seen = families(text)
    assert seen[("livetx_turns_total", (("input_type", "chat"), ("outcome", "ok")))] == 2
    assert seen[("livetx_turn_first_delta_seconds_count", (("input_type", "chat"),))] == 2
    assert seen[("livetx_provider_seconds_count", (("kind", "llm"), ("provider", "fake-model"), ("stage", "total")))] == 2
    assert seen[("livetx_errors_total", (("code", "UNKNOWN_MESSAGE_TYPE"),))] == 1
    turns = [e for e in events if e.get("livetx_event") == "turn"]
    assert sorted((t["username"], t["endpoint"], t["outcome"]) for t in turns) == [
        ("ann", OPEN_API, "ok"), ("bob", "/api/v1/chat", "ok")]
    assert all(t["metrics"]["outcome"] == "ok" for t in turns)


class FailingModel:
    """A model whose upstream refuses every request."""

    model = "failing-model"

    def stream(self, messages: Any, on_delta: Any) -> Deferred[None]:
        return fail(LLMError("upstream said 500"))


@pytest_twisted.ensureDeferred
async def test_a_failed_chat_turn_names_the_provider_and_its_code(tmp_path: Path) -> None:
    metrics = ServerMetrics()
    engines = Engines(llm=FailingModel(), tts=None, stt=None)
    chat = ChatService(store=SQLiteStore(tmp_path), engines=engines, clock=reactor)
    sent: list[dict[str, Any]] = []
    await chat.start(ChatRequest.parse("ann", {"message": "hi"}), sent.append, metrics.observer("/x", "chat", "ann")).done
    assert [e["type"] for e in sent][-3:] == ["message_saved", "error", "end"]
    assert sample(metrics, "livetx_provider_failures_total", kind="llm") == 1
    assert sample(metrics, "livetx_errors_total", code="LLM_ERROR") == 1
    assert sample(metrics, "livetx_turns_total", input_type="chat", outcome="failed") == 1


@pytest_twisted.ensureDeferred
async def test_readyz_notices_the_page_files_gone_under_a_running_server(
    livetx: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = tmp_path / "site-packages" / "static"
    shutil.copytree(pages.STATIC, installed)
    monkeypatch.setattr(pages, "STATIC", installed)  # an installed package this test may remove
    server = await livetx()
    assert (await get(server, "/"))[0] == 200
    shutil.rmtree(installed)  # pip uninstalls (or moves) the package under the running server
    assert (await get(server, "/"))[0] == 404
    code, _, body = await get(server, "/readyz")
    assert code == 503 and '"status": "unready"' in body, body
    assert json.loads(body)["checks"]["page"] == {"ok": False, "error": (
        f"the page's files are gone from {installed} (the package was reinstalled or removed): restart the server")}
