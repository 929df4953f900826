"""Tool calls end to end: the real server, the OpenAI stand-in streaming tool_calls, real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from livetx.cluster.local import free_port, wait_for_port
from livetx.testing.openai_server import DEFAULT_REPLY
from livetx.tools.loop import ANSWER_NOW

from . import tool_fixtures
from .support import connect
from .test_chat import chat_client, send
from .test_http_api import API
from .test_live_ws import LIVE, openai_config


@pytest.fixture(autouse=True)
def tool_package(tmp_path: Path) -> Iterator[None]:
    with tool_fixtures.installed(tmp_path / "site"):
        yield


def config(base_url: str, tts: bool = False, **tools: Any) -> str:
    settings = {"enabled": ["clock", "calculator", "slow", "broken"], **tools}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return openai_config(base_url, tts=tts) + f"\n[tools]\n{lines}\n"


def once(*calls: dict[str, Any]) -> Any:
    """The model calls ``calls`` when the user has just spoken, and answers once it has results."""
    return lambda messages, tools: list(calls) if messages[-1]["role"] == "user" else None


def of(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["t"] == kind]


def tool_messages(openai: Any, request: int = -1) -> list[dict[str, Any]]:
    return [m for m in openai.requests_to("/chat/completions")[request].json["messages"] if m["role"] == "tool"]


@pytest_twisted.ensureDeferred
async def test_live_round_trip(livetx: Any, openai: Any) -> None:
    openai.tool_calls = once({"id": "call_1", "name": "calculator", "arguments": {"expression": "6 * 7"},
                              "text": "Let me work it out. "})
    openai.reply = "It is 42."
    server = await livetx(config(openai.base_url))
    client = await connect(server.url(LIVE, token=server.token()))
    frames = await client.turn("what is six times seven")
    turn = frames[0]["turn"]
    assert of(frames, "tool_call") == [{"t": "tool_call", "turn": turn, "data": {
        "id": "call_1", "name": "calculator", "arguments": {"expression": "6 * 7"}}}]
    assert of(frames, "tool_result") == [{"t": "tool_result", "turn": turn, "data": {
        "id": "call_1", "name": "calculator", "ok": True, "result": 42}}]
    kinds = [f["t"] for f in frames]
    assert kinds.index("tool_call") < kinds.index("tool_result")
    assert "".join(f["data"]["text"] for f in of(frames, "bot_delta_chunk")) == "Let me work it out. It is 42."
    first, second = openai.requests_to("/chat/completions")
    assert {t["function"]["name"] for t in first.json["tools"]} == {"clock", "calculator", "slow", "broken"}
    assistant = second.json["messages"][-2]
    assert assistant["tool_calls"][0]["function"] == {"name": "calculator", "arguments": '{"expression": "6 * 7"}'}
    assert tool_messages(openai) == [{"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    metrics = {k: v for f in of(frames, "metrics") for k, v in f["data"].items()}
    assert (metrics["tool_calls"], metrics["tool_failures"], metrics["tool_timeouts"]) == (1, 0, 0)
    assert set(metrics["tool_latency"]) == {"calculator"}
    response = await treq.get(f"http://127.0.0.1:{server.port}/metrics", reactor=reactor)
    scraped = (await treq.content(response)).decode()
    assert 'livetx_tool_calls_total{status="ok",tool="calculator"} 1.0' in scraped
    assert 'livetx_tool_seconds_count{tool="calculator"} 1.0' in scraped

    # Reconnected, the model sees the call and its result again, as tool messages.
    await client.close_and_wait()
    client = await connect(server.url(LIVE, token=server.token()))
    openai.tool_calls = None
    await client.turn("and again")
    context = openai.requests_to("/chat/completions")[-1].json["messages"]
    assert [m["role"] for m in context[1:]] == ["user", "assistant", "tool", "assistant", "user"]
    assert context[2]["content"] == "Let me work it out. " and context[2]["tool_calls"][0]["id"] == "call_1"
    assert context[4] == {"role": "assistant", "content": "It is 42."}
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_chat_round_trip_and_history(livetx: Any, openai: Any) -> None:
    openai.tool_calls = once({"id": "call_c", "name": "clock", "arguments": {}})
    openai.reply = "It is late."
    server = await livetx(config(openai.base_url))
    client = await chat_client(server)
    send(client, "What time is it?")
    frames = await client.until("end")
    tools = [f for f in frames if f.get("chain_type") in ("tool_call", "tool_call_result")]
    assert [(f["type"], f["chain_type"]) for f in tools] == [("plain", "tool_call"), ("plain", "tool_call_result")]
    call, result = (json.loads(f["data"]) for f in tools)
    assert (call["id"], call["name"], call["args"]) == ("call_c", "clock", {})
    assert (result["id"], result["ok"], result["result"]["timezone"]) == ("call_c", True, "UTC")
    reply = "".join(f["data"] for f in frames if f["type"] == "plain" and not f.get("chain_type"))
    assert reply == "It is late."
    stats = next(f for f in frames if f["type"] == "agent_stats")["data"]
    assert stats["tool_calls"] == 1
    response = await treq.get(f"http://127.0.0.1:{server.port}/metrics", reactor=reactor)
    assert 'livetx_tool_calls_total{status="ok",tool="clock"} 1.0' in (await treq.content(response)).decode()

    session_id = frames[0]["session_id"]
    api = API(server)
    api.key = server.api_key
    code, history = await api.call("GET", f"/api/v1/chat/sessions/{session_id}/messages?username=ann")
    assert code == 200
    parts = history["messages"][1]["message"]
    assert [p["type"] for p in parts] == ["tool_call", "plain"]
    stored = parts[0]["tool_calls"][0]
    assert (stored["id"], stored["name"], stored["ok"]) == ("call_c", "clock", True)

    # The same events over HTTP as Server-Sent Events.
    openai.tool_calls = once({"id": "call_h", "name": "calculator", "arguments": {"expression": "2+2"}})
    events = await api.chat(username="ann", message="2+2?", session_id=session_id)
    tools = [(e["chain_type"], json.loads(e["data"])["id"]) for e in events if e.get("chain_type")]
    assert tools == [("tool_call", "call_h"), ("tool_call_result", "call_h")]

    openai.tool_calls = None
    send(client, "Thanks", session_id=session_id)
    await client.until("end")
    context = openai.requests_to("/chat/completions")[-1].json["messages"]
    assert [m["role"] for m in context[1:]] == ["user", "assistant", "tool", "assistant"] * 2 + ["user"]
    assert json.loads(context[3]["content"])["timezone"] == "UTC" and context[7]["content"] == "4"
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_max_rounds_then_an_answer_without_tools(livetx: Any, openai: Any) -> None:
    openai.tool_calls = lambda messages, tools: [{"name": "clock", "arguments": {}}]  # it never stops
    openai.reply = "Done asking."
    server = await livetx(config(openai.base_url, max_rounds=2))
    client = await connect(server.url(LIVE, token=server.token()))
    frames = await client.turn("time?")
    assert len(of(frames, "tool_result")) == 2
    requests = openai.requests_to("/chat/completions")
    assert len(requests) == 3 and "tools" not in requests[-1].json
    assert requests[-1].json["messages"][-1] == {"role": "system", "content": ANSWER_NOW}
    assert "".join(f["data"]["text"] for f in of(frames, "bot_delta_chunk")) == "Done asking."
    await client.close_and_wait()


@pytest.mark.parametrize("call, error", [
    ({"name": "broken", "arguments": {}}, "failed: the lights are on fire"),
    ({"name": "slow", "arguments": {"seconds": 5}}, "timed out after 0.2 s"),
    ({"name": "lights", "arguments": {"on": True}}, "unknown tool 'lights'; available: clock, calculator, slow, broken"),
    ({"name": "calculator", "arguments": {"expression": 12}}, "invalid arguments at expression: 12 is not of type 'string'"),
    ({"name": "slow", "arguments": '{"seconds": '}, "arguments are not valid JSON"),
])
@pytest_twisted.ensureDeferred
async def test_a_failed_call_is_reported_to_client_and_model(
    livetx: Any, openai: Any, call: dict[str, Any], error: str
) -> None:
    openai.tool_calls = once({"id": "call_x", **call})
    openai.reply = "Sorry, that did not work."
    server = await livetx(config(openai.base_url, timeout=0.2))
    client = await connect(server.url(LIVE, token=server.token()))
    frames = await client.turn("do it")
    (result,) = of(frames, "tool_result")
    assert result["data"] == {"id": "call_x", "name": call["name"], "ok": False, "result": error}
    assert tool_messages(openai) == [{"role": "tool", "tool_call_id": "call_x", "content": f"Error: {error}"}]
    assert frames[-1]["t"] == "end" and not of(frames, "error")
    metrics = {k: v for f in of(frames, "metrics") for k, v in f["data"].items()}
    assert metrics["tool_failures"] == 1 and metrics["tool_timeouts"] == int("timed out" in error)
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_interrupt_cancels_a_slow_tool_and_nothing_runs_after(livetx: Any, openai: Any) -> None:
    openai.tool_calls = lambda messages, tools: [{"id": "call_s", "name": "slow", "arguments": {"seconds": 3}}]
    server = await livetx(config(openai.base_url))
    client = await connect(server.url(LIVE, token=server.token()))
    client.send({"t": "text_input", "text": "take your time"})
    await client.until("tool_call")
    client.send({"t": "interrupt"})
    frames = await client.until("stop_play")
    assert [f["t"] for f in frames] == ["tool_result", "stop_play"]
    assert frames[0]["data"] == {"id": "call_s", "name": "slow", "ok": False, "result": "cancelled"}
    await deferLater(reactor, 0.5, lambda: None)
    assert tool_fixtures.journal == [("started", 3), ("cancelled",)]
    assert len(openai.requests_to("/chat/completions")) == 1  # no round after the interrupt
    # The next turn starts clean and sees the cancelled call in its context.
    openai.tool_calls = None
    frames = await client.turn("never mind")
    assert frames[0]["data"] == {"input_type": "text"}  # nothing of the stopped turn after stop_play
    assert tool_messages(openai) == [{"role": "tool", "tool_call_id": "call_s", "content": "Error: cancelled"}]
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_a_long_call_says_the_filler_once(livetx: Any, openai: Any) -> None:
    openai.tool_calls = once({"name": "slow", "arguments": {"seconds": 0.6}}, {"name": "slow", "arguments": {"seconds": 0.6}})
    openai.reply = "Here it is."
    server = await livetx(config(openai.base_url, tts=True, filler_after_ms=100, filler="Hold on."))
    client = await connect(server.url(LIVE, token=server.token()))
    frames = await client.turn("slow please")
    captions = [f["data"]["text"] for f in of(frames, "bot_text_chunk")]
    assert captions == ["Hold on.", "Here it is."]
    kinds = [f["t"] for f in frames]
    assert kinds.index("tool_call") < kinds.index("bot_text_chunk") < kinds.index("tool_result")
    assert len(of(frames, "response")) == 2
    assert "".join(f["data"]["text"] for f in of(frames, "bot_delta_chunk")) == "Here it is."
    speech = [r.json["input"] for r in openai.requests_to("/audio/speech")]
    assert speech == ["Hold on.", "Here it is."]
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_the_offline_echo_model_calls_the_clock_when_asked_the_time(livetx: Any) -> None:
    server = await livetx('[tts]\nprovider = "none"\n[tools]\nenabled = ["clock", "calculator"]\n'
                          'timezone = "Europe/Berlin"\n')
    client = await connect(server.url(LIVE, token=server.token()))
    frames = await client.turn("what time is it")
    assert [f["data"] for f in of(frames, "tool_call")] == [{"id": "call_echo_1", "name": "clock", "arguments": {}}]
    result = of(frames, "tool_result")[0]["data"]
    assert result["ok"] and result["result"]["timezone"] == "Europe/Berlin"
    clock = result["result"]
    assert of(frames, "bot_msg")[0]["data"]["text"] == \
        f"It is {clock['time']} on {clock['weekday']} {clock['date']} (Europe/Berlin)."
    frames = await client.turn("hello there")  # anything else is echoed, with no call
    assert not of(frames, "tool_call") and of(frames, "bot_msg")[0]["data"]["text"] == "hello there"
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_the_simulator_is_told_from_its_command_line_to_call_a_tool(livetx: Any) -> None:
    """``python -m livetx.testing.openai_server --call-tool``, as the README shows it, in a process of its own."""
    port = free_port()
    simulator = subprocess.Popen([sys.executable, "-m", "livetx.testing.openai_server", "--port", str(port),
                                  "--call-tool", 'calculator:{"expression": "6 * 7"}', "--call-tool", "weather"],
                                 stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, simulator)
        server = await livetx(config(f"http://127.0.0.1:{port}/v1", enabled=["calculator", "clock"]))
        client = await connect(server.url(LIVE, token=server.token()))
        frames = await client.turn("what is six times seven")
        assert [(f["data"]["name"], f["data"]["arguments"]) for f in of(frames, "tool_call")] == [
            ("calculator", {"expression": "6 * 7"})]  # weather is not offered, so not called
        assert [(f["data"]["ok"], f["data"]["result"]) for f in of(frames, "tool_result")] == [(True, 42)]
        assert "".join(f["data"]["text"] for f in of(frames, "bot_delta_chunk")) == DEFAULT_REPLY
        await client.close_and_wait()
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)


@pytest_twisted.ensureDeferred
async def test_the_echo_model_without_the_clock_tool_echoes_the_question(livetx: Any) -> None:
    server = await livetx('[tts]\nprovider = "none"\n[tools]\nenabled = ["calculator"]\n')
    client = await connect(server.url(LIVE, token=server.token()))
    frames = await client.turn("what time is it")
    assert not of(frames, "tool_call") and of(frames, "bot_msg")[0]["data"]["text"] == "what time is it"
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_chat_interrupt_cancels_a_slow_tool(livetx: Any, openai: Any) -> None:
    openai.tool_calls = lambda messages, tools: [{"id": "call_w", "name": "slow", "arguments": {"seconds": 3}}]
    server = await livetx(config(openai.base_url))
    client = await chat_client(server)
    send(client, "wait for it")
    await client.until("plain")  # the tool_call event
    client.send({"ct": "chat", "t": "interrupt"})
    frames = await client.until("end")
    result = json.loads(next(f["data"] for f in frames if f.get("chain_type") == "tool_call_result"))
    assert (result["id"], result["ok"], result["result"]) == ("call_w", False, "cancelled")
    stats = next(f for f in frames if f["type"] == "agent_stats")["data"]
    assert stats["interrupted"] is True and stats["tools"][0]["status"] == "cancelled"
    await deferLater(reactor, 0.3, lambda: None)
    assert tool_fixtures.journal == [("started", 3), ("cancelled",)]
    assert len(openai.requests_to("/chat/completions")) == 1
    await client.close_and_wait()
