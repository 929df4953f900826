"""MCP tool servers (``[[tools.mcp]]``) end to end: real MCP servers written with the SDK, real transports, real sockets.

The server (``tests/mcp_fixture_server.py``) runs as its own process, over
stdio (livetx starts it) or Streamable HTTP (the test starts it), and notes
every call it sees in a journal file, so cancellation and refusals are
checked on the server's side. The model is the in-process OpenAI stand-in,
scripted to call the MCP tools; each scenario runs as voice turns
(``text_input`` over the live socket) and as chat turns.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jsonschema
import mcp_types
import pytest
import pytest_twisted
import treq
import yaml
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher

from livetx.config import ConfigError, from_mapping
from livetx.tools import Tool, ToolError
from livetx.tools.loop import MAX_RESULT_CHARS
from livetx.tools.mcp_servers import result_value, tool_name
from livetx.tools.registry import ToolRegistry

from .services import free_port, wait_for_port
from .support import LiveClient, connect
from .test_chat import chat_client, send
from .test_live_ws import LIVE, openai_config

ROOT = Path(__file__).resolve().parent.parent
#: What /readyz answers, as the OpenAPI document says.
READINESS = yaml.safe_load((ROOT / "livetx/web/openapi.yaml").read_text())["components"]["schemas"]["Readiness"]
SERVER = ["-m", "tests.mcp_fixture_server"]


# -- configuration ------------------------------------------------------------


def toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def table(**keys: Any) -> str:
    return "\n[[tools.mcp]]\n" + "\n".join(f"{k} = {toml(v)}" for k, v in keys.items()) + "\n"


def stdio_table(journal: Path, **keys: Any) -> dict[str, Any]:
    env = {"PYTHONPATH": str(ROOT), **keys.pop("env", {})}
    return {"name": "t", "command": sys.executable, "args": [*SERVER, "stdio", str(journal)], "env": env,
            "cwd": str(ROOT), **keys}


@pytest.mark.parametrize("entry, error", [
    ({"command": "python3"}, "[[tools.mcp]] needs a name of 1 to 32 letters, digits or -, got ''"),
    ({"name": "home_x", "command": "python3"}, "[[tools.mcp]] 'home_x' needs a name of 1 to 32 letters, digits or -"),
    ({"name": "home"}, "[[tools.mcp]] 'home' needs either command (stdio) or url (Streamable HTTP), not both"),
    ({"name": "home", "command": "python3", "url": "http://h/mcp"}, "needs either command (stdio) or url"),
    ({"name": "home", "command": "no-such-mcp-server"}, "command 'no-such-mcp-server' is not an executable on PATH"),
    ({"name": "home", "url": "ftp://h/mcp"}, "url must be an http:// or https:// URL, got 'ftp://h/mcp'"),
    ({"name": "home", "url": "http://h/mcp", "args": ["-v"]}, "args, env and cwd are for a command, not a url"),
    ({"name": "home", "command": "python3", "headers": {"A": "b"}}, "headers are for a url, not a command"),
    ({"name": "home", "command": "python3", "timeout": 0}, "timeout must be more than 0"),
    ({"name": "home", "command": "python3", "env": {"A": "${LIVETX_TEST_UNSET}"}},
     "env names ${LIVETX_TEST_UNSET}, which is not set in the environment"),
    ({"name": "home", "command": "python3", "env": {"A": 1}}, "[tools.mcp] env must be a table of strings, got {'A': 1}"),
    ({"name": "home", "command": "python3", "bogus": 1}, "[tools.mcp] unknown key 'bogus'"),
])
def test_a_bad_entry_is_one_line(entry: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        from_mapping({"tools": {"mcp": [entry]}}, environ={})
    assert error in str(raised.value) and "\n" not in str(raised.value)


def test_names_are_unique_and_variables_are_filled_in() -> None:
    twice = {"tools": {"mcp": [{"name": "a", "command": "python3"}, {"name": "a", "url": "http://h/mcp"}]}}
    with pytest.raises(ConfigError, match="'a': the name is used twice"):
        from_mapping(twice, environ={})
    with pytest.raises(ConfigError, match=r"\[tools\] mcp must be a list of tables"):
        from_mapping({"tools": {"mcp": {"name": "a"}}}, environ={})
    config = from_mapping({"tools": {"mcp": [
        {"name": "a", "url": "https://h/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}, "timeout": 3},
    ]}}, environ={"TOKEN": "s3cret"})
    (server,) = config.tools.mcp
    assert (server.headers, server.timeout, server.allow) == ({"Authorization": "Bearer s3cret"}, 3.0, None)
    assert "s3cret" not in repr(config)


# -- names, results and the registry -------------------------------------------


def test_tool_names_fit_what_the_model_accepts() -> None:
    assert tool_name("home", "lights_on") == "home_lights_on"
    assert tool_name("home", "lights.on/off") == "home_lights_on_off"
    assert tool_name("home", "x" * 100) == "home_" + "x" * 59


def test_a_result_is_text_for_the_model() -> None:
    text = mcp_types.TextContent(text="a red dot")
    image = mcp_types.ImageContent(data="A" * 400, mime_type="image/png")
    link = mcp_types.ResourceLink(name="report", uri="file:///r.pdf")
    blob = mcp_types.EmbeddedResource(resource=mcp_types.BlobResourceContents(uri="file:///x", blob="AAAA"))
    result = mcp_types.CallToolResult(content=[text, image, link, blob])
    assert result_value(result).split("\n") == [
        "a red dot", "[image: image/png, 300 bytes, not shown]", "[resource link: report file:///r.pdf]",
        "[resource file:///x: binary, 3 bytes, not shown]",
    ]
    structured = mcp_types.CallToolResult(content=[], structured_content={"on": True})
    assert result_value(structured) == {"on": True}
    long = result_value(mcp_types.CallToolResult(content=[mcp_types.TextContent(text="x" * 10**6)]))
    assert len(long) == MAX_RESULT_CHARS + 1 and long.endswith("…")
    with pytest.raises(ToolError, match="^the hub is down$"):
        result_value(mcp_types.CallToolResult(content=[mcp_types.TextContent(text="the hub is down")], is_error=True))


def test_the_registry_takes_a_server_s_new_list_and_refuses_taken_names() -> None:
    def tool(name: str) -> Tool:
        return Tool(name, "", {"type": "object", "properties": {"n": {"type": "integer"}}}, lambda **_: None)

    registry = ToolRegistry([tool("clock")])
    assert registry.offer("home", [tool("home_on"), tool("clock")]) == ["tool 'clock' is refused: the name is taken"]
    assert registry.names == ["clock", "home_on"]
    assert registry.offer("home", [tool("home_off")]) == []
    assert registry.names == ["clock", "home_off"]
    assert [t["function"]["name"] for t in registry.spec] == ["clock", "home_off"]
    assert registry.invalid("home_off", {"n": "x"}) == "invalid arguments at n: 'x' is not of type 'integer'"


# -- start-up and shutdown -------------------------------------------------------


def twistd(config: Path, data: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "live",
         "--config", str(config), "--data-dir", str(data)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def test_colliding_tool_names_stop_start_up_with_one_line(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    config = tmp_path / "livetx.toml"
    config.write_text(openai_config("http://127.0.0.1:9/v1", tts=False)
                      + table(**stdio_table(journal, env={"MCP_FIXTURE_COLLIDE": "1"})))
    out = twistd(config, tmp_path / "data")
    assert out.returncode == 1
    assert out.stderr == "livetx: [[tools.mcp]] 't': tool 't_look_up' is refused: the name is taken\n"
    (pid,) = {event[0] for event in read(journal)}
    assert not alive(pid)  # the server it had started is stopped


def test_a_server_without_the_sdk_is_a_one_line_start_up_error(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['mcp'] = None\n"  # as if livetx[mcp] were not installed
        "from livetx.engines import check\n"
        "from livetx.config import from_mapping\n"
        "check(from_mapping({'tools': {'mcp': [{'name': 'a', 'url': 'http://h/mcp'}]}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stderr.strip().endswith("[[tools.mcp]] needs: pip install 'livetx[mcp]'")


@pytest.mark.parametrize("tools", ["", '[tools]\nenabled = ["clock"]\n'])
def test_nothing_of_mcp_is_imported_without_tools_mcp(tmp_path: Path, tools: str) -> None:
    config = tmp_path / "livetx.toml"
    config.write_text(openai_config("http://127.0.0.1:9/v1", tts=False) + tools)
    code = (
        "import sys\n"
        "from twisted.internet import reactor\n"
        "from livetx.tap import Options, makeService\n"
        "options = Options()\n"
        f"options.parseOptions(['--data-dir', {str(tmp_path)!r}, '--config', {str(config)!r}])\n"
        "makeService(options, reactor)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types', 'anyio', 'httpx2')"
        " or m.startswith('livetx.tools.mcp') or m == 'livetx.tools.asyncio_bridge'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


@pytest_twisted.ensureDeferred
async def test_shutdown_stops_a_stubborn_stdio_server(livetx: Any, openai: Any, tmp_path: Path) -> None:
    """stdin closed, then SIGTERM, then SIGKILL: a server that ignores the first two is still stopped."""
    journal = tmp_path / "journal"
    server = await livetx(openai_config(openai.base_url, tts=False)
                          + table(**stdio_table(journal, env={"MCP_FIXTURE_STUBBORN": "1"})))
    (pid,) = {event[0] for event in read(journal)}
    await server.stop()
    assert [e[1] for e in read(journal)] == ["started", "stdin closed", "sigterm ignored"]
    assert not alive(pid)


# -- turns over real sockets ----------------------------------------------------


def read(journal: Path) -> list[list[Any]]:
    return [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await deferLater(reactor, 0.05, lambda: None)


class HTTPServer:
    """The fixture server over Streamable HTTP, as its own process on a free port."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *SERVER, "http", str(self.port), str(self.journal)], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)


@pytest.fixture(params=["stdio", "http"])
def mcp_server(request: Any, tmp_path: Path) -> Iterator[tuple[str, Path, HTTPServer | None]]:
    """The ``[[tools.mcp]]`` table of the fixture server over either transport, and its journal."""
    journal = tmp_path / "journal"
    if request.param == "stdio":
        yield table(**stdio_table(journal, timeout=5)), journal, None
        return
    http = HTTPServer(journal)
    http.start()
    yield table(name="t", url=http.url, headers={"X-Test": "yes"}, timeout=5), journal, http
    http.stop()


class Turns:
    """One user's turns as voice (text input on the live socket) or chat turns, seen the same way."""

    def __init__(self, mode: str, client: LiveClient) -> None:
        self.mode = mode
        self.client = client

    def say(self, text: str) -> None:
        if self.mode == "voice":
            self.client.send({"t": "text_input", "text": text})
        else:
            send(self.client, text)

    async def ended(self, interrupted: bool = False) -> list[dict[str, Any]]:
        """The turn's tool results, as ``{id, name, ok, result}``."""
        frames = await self.client.until("stop_play" if interrupted and self.mode == "voice" else "end")
        if self.mode == "voice":
            return [f["data"] for f in frames if f["t"] == "tool_result"]
        results = [json.loads(f["data"]) for f in frames if f.get("chain_type") == "tool_call_result"]
        return [{k: r[k] for k in ("id", "name", "ok", "result")} for r in results]

    async def turn(self, text: str) -> list[dict[str, Any]]:
        self.say(text)
        return await self.ended()

    async def started(self) -> None:
        await self.client.until("tool_call" if self.mode == "voice" else "plain")

    def interrupt(self) -> None:
        self.client.send({"t": "interrupt"} if self.mode == "voice" else {"ct": "chat", "t": "interrupt"})


def once(call: dict[str, Any]) -> Any:
    return lambda messages, tools: [call] if messages[-1]["role"] == "user" else None


def offered(openai: Any) -> dict[str, Any]:
    return {t["function"]["name"]: t["function"] for t in openai.requests_to("/chat/completions")[-1].json["tools"]}


async def readyz(server: Any) -> dict[str, Any]:
    response = await treq.get(f"http://127.0.0.1:{server.port}/readyz", reactor=reactor)
    return dict(await response.json())


@pytest.mark.parametrize("mode", ["voice", "chat"])
@pytest_twisted.ensureDeferred
async def test_mcp_tools_in_turns(
    livetx: Any, openai: Any, mcp_server: tuple[str, Path, HTTPServer | None], mode: str,
) -> None:
    entry, journal, http = mcp_server
    transport = "http" if http is not None else "stdio"
    server = await livetx(openai_config(openai.base_url, tts=False) + entry)
    client = await (connect(server.url(LIVE, token=server.token())) if mode == "voice" else chat_client(server))
    turns = Turns(mode, client)
    ready = await readyz(server)
    assert ready["checks"]["mcp:t"] == {"ok": True, "state": "ready", "transport": transport, "tools": 7,
                                        "restarts": 0}
    jsonschema.validate(ready, READINESS)
    first_pid = read(journal)[0][0]

    # A call that works; the tool is offered with the server's inputSchema.
    openai.tool_calls = once({"id": "c1", "name": "t_add", "arguments": {"a": 2, "b": 3}})
    assert await turns.turn("two plus three") == [{"id": "c1", "name": "t_add", "ok": True, "result": "5"}]
    add = offered(openai)["t_add"]
    assert add["parameters"]["properties"] == {"a": {"title": "A", "type": "integer"},
                                               "b": {"title": "B", "type": "integer"}}
    assert add["description"] == "Adds two whole numbers."
    assert sorted(offered(openai)) == ["t_add", "t_crash", "t_fail", "t_grow", "t_huge", "t_picture", "t_slow"]
    assert read(journal)[-1][1:] == ["add", 2, 3, "yes" if http is not None else None]  # with the headers

    # The model's arguments break the schema: refused, the server never sees the call.
    calls = len(read(journal))
    openai.tool_calls = once({"id": "c2", "name": "t_add", "arguments": {"a": "two", "b": 3}})
    assert await turns.turn("two plus three, wrongly") == [{"id": "c2", "name": "t_add", "ok": False,
                                                            "result": "invalid arguments at a: 'two' is not of type 'integer'"}]
    assert len(read(journal)) == calls

    # An isError result reaches the model as an error.
    openai.tool_calls = once({"id": "c3", "name": "t_fail", "arguments": {}})
    assert await turns.turn("fail") == [{"id": "c3", "name": "t_fail", "ok": False,
                                         "result": "failed: the lights are on fire"}]
    tool_message = openai.requests_to("/chat/completions")[-1].json["messages"][-1]
    assert tool_message == {"role": "tool", "tool_call_id": "c3", "content": "Error: failed: the lights are on fire"}

    # A huge result is cut before the model, the client or the history sees it; an image is described.
    openai.tool_calls = once({"id": "c4", "name": "t_huge", "arguments": {}})
    (huge,) = await turns.turn("huge")
    assert huge["ok"] and huge["result"] == "x" * MAX_RESULT_CHARS + "…"
    assert openai.requests_to("/chat/completions")[-1].json["messages"][-1]["content"] == huge["result"]
    openai.tool_calls = once({"id": "c5", "name": "t_picture", "arguments": {}})
    (picture,) = await turns.turn("picture")
    assert picture["result"] == "a red dot\n[image: image/png, 304 bytes, not shown]"

    # list_changed: the new tool is offered in the next turn, and works.
    openai.tool_calls = once({"id": "c6", "name": "t_grow", "arguments": {}})
    assert (await turns.turn("grow"))[0]["ok"]
    await until(lambda: read(journal)[-1][1] == "grow")
    openai.tool_calls = once({"id": "c7", "name": "t_extra", "arguments": {"word": "hi"}})
    deadline = time.monotonic() + 10
    while not (results := await turns.turn("say hi"))[0]["ok"]:  # the new list may land after the call's answer
        assert results[0]["result"].startswith("unknown tool 't_extra'") and time.monotonic() < deadline
        await deferLater(reactor, 0.1, lambda: None)
    assert results == [{"id": "c7", "name": "t_extra", "ok": True, "result": "HI"}]
    assert offered(openai)["t_extra"]["description"] == "Says the word back."

    # A slow call that an interrupt cancels: the server sees the cancellation.
    openai.tool_calls = once({"id": "c8", "name": "t_slow", "arguments": {"seconds": 30}})
    turns.say("take your time")
    await turns.started()
    await until(lambda: read(journal)[-1][1] == "slow started")
    turns.interrupt()
    assert await turns.ended(interrupted=True) == [{"id": "c8", "name": "t_slow", "ok": False, "result": "cancelled"}]
    await until(lambda: read(journal)[-1][1] == "slow cancelled", timeout=5)

    # A server that crashes mid-call: the call fails, the next call gets an error at once, not a hang;
    # the server is started again (stdio) or reconnected once it is back (HTTP).
    openai.tool_calls = once({"id": "c9", "name": "t_crash", "arguments": {}})
    (crashed,) = await turns.turn("crash")
    assert not crashed["ok"] and crashed["result"].startswith("failed: the MCP server 't' ")
    await until(lambda: not alive(first_pid))
    openai.tool_calls = once({"id": "c10", "name": "t_add", "arguments": {"a": 1, "b": 1}})
    (down,) = await turns.turn("one plus one")
    assert not down["ok"] and down["result"].startswith("failed: the MCP server 't' ")
    if http is not None:  # livetx cannot start a remote server: /readyz says it is down until it is back
        deadline = time.monotonic() + 15  # (/readyz answers from a check up to 5 s old)
        while (ready := await readyz(server))["checks"]["mcp:t"]["ok"]:
            assert time.monotonic() < deadline
            await deferLater(reactor, 0.2, lambda: None)
        assert ready["status"] == "degraded" and ready["checks"]["mcp:t"]["error"].startswith("restarting: ")
        jsonschema.validate(ready, READINESS)
        http.start()
    openai.tool_calls = once({"id": "c11", "name": "t_add", "arguments": {"a": 1, "b": 1}})
    deadline = time.monotonic() + 30
    while not (results := await turns.turn("one plus one again"))[0]["ok"]:  # back in a second or two
        assert results[0]["result"].startswith("failed: the MCP server 't' is restarting") and time.monotonic() < deadline
        await deferLater(reactor, 0.3, lambda: None)
    assert results == [{"id": "c11", "name": "t_add", "ok": True, "result": "2"}]
    assert read(journal)[-1][0] != first_pid
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_an_allow_list_and_a_server_s_own_timeout(
    livetx: Any, openai: Any, tmp_path: Path,
) -> None:
    journal = tmp_path / "journal"
    logged: list[str] = []
    observer = lambda event: logged.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        server = await livetx(openai_config(openai.base_url, tts=False) + "[tools]\ntimeout = 30\n"
                              + table(**stdio_table(journal, timeout=0.5, allow=["slow", "add", "nope"])))
        line = "MCP server t (stdio) ready with 2 tools: t_add, t_slow"
        await until(lambda: line in logged, timeout=5)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert "MCP server t has no tools named nope (in its allow)" in logged
    turns = Turns("voice", await connect(server.url(LIVE, token=server.token())))
    openai.tool_calls = once({"id": "c1", "name": "t_slow", "arguments": {"seconds": 30}})
    assert await turns.turn("slow") == [{"id": "c1", "name": "t_slow", "ok": False, "result": "timed out after 0.5 s"}]
    assert sorted(offered(openai)) == ["t_add", "t_slow"]
    await until(lambda: read(journal)[-1][1] == "slow cancelled", timeout=5)
    await turns.client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_the_asyncio_thread_answers_on_the_reactor_and_cancels_its_task() -> None:
    import asyncio
    import threading

    from livetx.tools.asyncio_bridge import AsyncioThread

    bridge = AsyncioThread(reactor)
    seen: list[str] = []

    async def answer() -> str:
        seen.append(threading.current_thread().name)
        return "42"

    async def broken() -> None:
        raise ToolError("no")

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    reactor_thread = threading.current_thread()
    assert await bridge.call(answer).addCallback(lambda v: (v, threading.current_thread() is reactor_thread)) == (
        "42", True)
    with pytest.raises(ToolError):
        await bridge.call(broken)
    running = bridge.call(forever)
    await deferLater(reactor, 0.1, lambda: None)
    running.cancel()
    with pytest.raises(defer.CancelledError):
        await running
    await until(lambda: "cancelled" in seen, timeout=5)
    assert seen == ["livetx-asyncio", "cancelled"]

    async def nothing() -> None:
        pass

    await bridge.stop(nothing)
    await until(lambda: not bridge._thread.is_alive(), timeout=5)


@pytest_twisted.ensureDeferred
async def test_a_server_that_will_not_start_is_retried_with_back_off(livetx: Any, openai: Any) -> None:
    """Start-up goes on without it; /readyz and the log say why, and the waits double."""
    logged: list[str] = []
    observer = lambda event: logged.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        server = await livetx(openai_config(openai.base_url, tts=False) + table(
            name="t", command=sys.executable, args=["-c", "raise SystemExit(1)"]))
        await until(lambda: sum("trying again in" in line for line in logged) >= 3, timeout=20)
    finally:
        globalLogPublisher.removeObserver(observer)
    waits = [line.split("trying again in ")[1] for line in logged if "trying again in" in line]
    assert waits[:3] == ["1 s", "2 s", "4 s"]
    assert any(line.startswith("MCP server t did not start (") for line in logged)
    ready = await readyz(server)
    assert ready["status"] == "degraded" and ready["checks"]["mcp:t"]["ok"] is False
    assert ready["checks"]["mcp:t"]["error"].startswith("restarting: ")


@pytest_twisted.ensureDeferred
async def test_a_slow_mcp_call_says_the_filler(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await livetx(openai_config(openai.base_url, tts=True) + '[tools]\nfiller_after_ms = 100\nfiller = "Hold on."\n'
                          + table(**stdio_table(tmp_path / "journal")))
    client = await connect(server.url(LIVE, token=server.token()))
    openai.tool_calls = once({"id": "c1", "name": "t_slow", "arguments": {"seconds": 0.6}})
    openai.reply = "Here it is."
    frames = await client.turn("slow please")
    assert [f["data"]["text"] for f in frames if f["t"] == "bot_text_chunk"] == ["Hold on.", "Here it is."]
    (result,) = [f["data"] for f in frames if f["t"] == "tool_result"]
    assert result == {"id": "c1", "name": "t_slow", "ok": True, "result": "waited 0.6 s"}
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_a_stdio_server_that_dies_while_idle_is_started_again(livetx: Any, openai: Any, tmp_path: Path) -> None:
    """Its end of the pipe closing is enough: no call or ping has to fail first."""
    journal = tmp_path / "journal"
    server = await livetx(openai_config(openai.base_url, tts=False) + table(**stdio_table(journal)))
    (first,) = {event[0] for event in read(journal)}
    os.kill(first, signal.SIGKILL)
    await until(lambda: len({event[0] for event in read(journal)}) == 2)  # the first wait is 1 s; no call or ping is made
    client = await connect(server.url(LIVE, token=server.token()))
    openai.tool_calls = once({"id": "c1", "name": "t_add", "arguments": {"a": 1, "b": 2}})
    deadline = time.monotonic() + 10
    while not (results := await Turns("voice", client).turn("one plus two"))[0]["ok"]:
        assert time.monotonic() < deadline
        await deferLater(reactor, 0.2, lambda: None)
    assert results[0]["result"] == "3" and read(journal)[-1][0] != first
    await client.close_and_wait()
