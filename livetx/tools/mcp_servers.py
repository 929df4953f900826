"""MCP servers' tools, offered to the model beside the built-ins (``[[tools.mcp]]``, docs/tools.md).

Each configured server gets one client of the official ``mcp`` SDK, over
stdio (livetx starts the program) or Streamable HTTP. The SDK runs on an
asyncio loop of its own thread (:mod:`livetx.tools.asyncio_bridge`); the
reactor sees each MCP tool as a plain :class:`~livetx.tools.Tool` whose call
returns a cancellable Deferred, so the tool loop's rules (schema check,
deadline, filler, cancellation on interrupt, the frames and the record)
apply to MCP tools unchanged. Cancelling a call cancels its task, and the
SDK then sends the server ``notifications/cancelled``.

A server is watched for as long as livetx runs: when it dies (or its
connection does) it is started or reconnected again with back-off, and its
tools answer with an error meanwhile instead of hanging. The tool list is
refreshed when the server sends ``notifications/tools/list_changed``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, AsyncIterator, Callable, Sequence

import anyio
import httpx2
import jsonschema
import mcp_types
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from livetx import __version__
from livetx.config import ConfigError, MCPServerConfig, ToolsConfig
from livetx.tools import Tool, ToolError
from livetx.tools.asyncio_bridge import STOP_GRACE, AsyncioThread
from livetx.tools.loop import MAX_RESULT_CHARS

_log = Logger()

#: What OpenAI-compatible services accept as a function name; anything else in an MCP tool's name becomes ``_``.
_UNFIT = re.compile(r"[^A-Za-z0-9_-]")
MAX_NAME = 64
#: Back-off between restarts: doubles from the first to the last.
BACKOFF_FIRST = 1.0
BACKOFF_LAST = 30.0
#: An idle connection is pinged this often, so a Streamable HTTP server that went away is noticed.
PING_SECONDS = 15.0
#: Most tools taken from one server, and pages of ``tools/list`` read.
MAX_TOOLS = 128
MAX_PAGES = 20
#: Largest message read from a Streamable HTTP server (the SDK's default is 1 MiB); results are cut far below.
MAX_EVENT_BYTES = 4 * 1024 * 1024
#: Seconds starting a server, its handshake and a tool list may take (a stdio server may start slowly;
#: its ``timeout`` is for calls). Start-up waits this long for each server's first list.
CONNECT_SECONDS = 30.0


class Unavailable(ToolError):
    """The server is not connected: its tools answer at once with this."""


def tool_name(server: str, tool: str) -> str:
    """``<server>_<tool>`` within ``^[A-Za-z0-9_-]{1,64}$``."""
    return _UNFIT.sub("_", f"{server}_{tool}")[:MAX_NAME]


def result_value(result: mcp_types.CallToolResult) -> Any:
    """What the model is told of a result: text as text, other content described, never inlined.

    A result with no content blocks but ``structuredContent`` gives that
    value. ``isError`` results raise :class:`ToolError`, which the tool loop
    reports to the model as an error.
    """
    parts = [_described(block) for block in result.content]
    if not parts and result.structured_content is not None and not result.is_error:
        return result.structured_content
    text = "\n".join(parts)
    if len(text) > MAX_RESULT_CHARS:  # cut here already: nothing longer crosses to the reactor
        text = text[:MAX_RESULT_CHARS] + "…"
    if result.is_error:
        raise ToolError(text or "the tool reported an error")
    return text


def _described(block: Any) -> str:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, (mcp_types.ImageContent, mcp_types.AudioContent)):
        return f"[{block.type}: {block.mime_type}, {_size(block.data)}, not shown]"
    if isinstance(block, mcp_types.ResourceLink):
        return f"[resource link: {block.name} {block.uri}]"
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, mcp_types.TextResourceContents):
            return resource.text
        return f"[resource {resource.uri}: {resource.mime_type or 'binary'}, {_size(resource.blob)}, not shown]"
    return f"[{getattr(block, 'type', 'content')}, not shown]"


def _size(data: str) -> str:
    """The size of base64 ``data`` once decoded, for a description."""
    size = len(data.rstrip("=")) * 3 // 4
    return f"{size} bytes" if size < 10_000 else f"{size // 1000} kB"


class MCPServer:
    """One configured server: its connection, kept up with back-off, and its current tools.

    The coroutines run on the bridge's loop; ``state`` and ``tools`` are read
    from the reactor (plain attribute reads).
    """

    def __init__(
        self, config: MCPServerConfig, timeout: float, publish: Callable[[MCPServer], None],
        on_reactor: Callable[..., Any],
    ) -> None:
        self.config = config
        #: ``reactor.callFromThread``: the log is written from the reactor's thread only.
        self._on_reactor = on_reactor
        self.name = config.name
        self.timeout = config.timeout if config.timeout is not None else timeout
        self.transport = "stdio" if config.command is not None else "http"
        #: ``starting``, ``ready``, ``restarting`` or ``stopped``.
        self.state = "starting"
        self.error: str | None = None
        #: Connections lost or failed since livetx started (``/readyz``).
        self.restarts = 0
        #: The server's tools as it listed them, allow-list applied.
        self.tools: list[mcp_types.Tool] = []
        self._publish = publish
        self._session: ClientSession | None = None
        self._lost: asyncio.Event | None = None
        self._relist: asyncio.Event | None = None
        #: A call's connection failed: ping now to learn whether the server is gone.
        self._doubt: asyncio.Event | None = None
        #: Set once the first attempt to connect has ended, either way (start-up waits for it).
        self.first = threading.Event()
        #: :meth:`run` on the loop: cancelled to stop (the future of submitting it is done at once then).
        self.task: asyncio.Task[None] | None = None

    # -- the connection's life ------------------------------------------------

    async def run(self) -> None:
        """Connect, list, serve; on any loss wait and start again, until cancelled."""
        self.task = asyncio.current_task()
        delay = BACKOFF_FIRST
        while True:
            try:
                await self._connected()
            except asyncio.CancelledError:
                self.state = "stopped"
                raise
            except Exception as e:  # the server could not start, or its connection failed
                self.error = _short(e)
            if self.state == "ready":  # it ran: the back-off starts again from the first wait
                delay = BACKOFF_FIRST
            self._session = None
            self.state = "restarting"
            self.first.set()
            self.restarts += 1
            self._on_reactor(_log.warn, "MCP server {name} is down ({why}); trying again in {delay:g} s",
                             name=self.name, why=self.error, delay=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_LAST)

    async def _connected(self) -> None:
        """One connection, from start to loss."""
        self._lost, self._relist, self._doubt = asyncio.Event(), asyncio.Event(), asyncio.Event()
        async with AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(self._streams())
            read = await stack.enter_async_context(_Watched(read, self._lost))
            session = await stack.enter_async_context(ClientSession(
                read, write, message_handler=self._message,
                client_info=mcp_types.Implementation(name="livetx", version=__version__),
            ))
            await asyncio.wait_for(session.initialize(), CONNECT_SECONDS)
            await self._list(session)
            self._session, self.state, self.error = session, "ready", None
            self.first.set()
            self._on_reactor(_log.info, "MCP server {name} ({transport}) ready with {count} tools: {names}",
                             name=self.name, transport=self.transport, count=len(self.tools),
                             names=", ".join(tool_name(self.name, t.name) for t in self.tools) or "none")
            while not self._lost.is_set():
                await self._serve(session)
        self.error = self.error or "the connection closed"

    def _streams(self) -> Any:
        config = self.config
        if config.command is not None:
            return stdio_client(StdioServerParameters(
                command=config.command, args=config.args, env=config.env or None, cwd=config.cwd,
            ))
        assert config.url is not None
        return _http_streams(config.url, config.headers)

    async def _serve(self, session: ClientSession) -> None:
        """Wait for a loss, a changed tool list, or the time to ping."""
        assert self._lost is not None and self._relist is not None and self._doubt is not None
        waits = [asyncio.ensure_future(e.wait()) for e in (self._lost, self._relist, self._doubt)]
        try:
            await asyncio.wait(waits, timeout=PING_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self._lost.is_set():
            return
        try:
            if self._relist.is_set():
                self._relist.clear()
                await self._list(session)
                self._on_reactor(_log.info, "MCP server {name} changed its tools: {names}", name=self.name,
                                 names=", ".join(tool_name(self.name, t.name) for t in self.tools) or "none")
            else:
                self._doubt.clear()
                await asyncio.wait_for(session.send_ping(), self.timeout or CONNECT_SECONDS)  # 0: calls have no limit
        except Exception as e:
            self.error = _short(e)
            self._lost.set()

    async def _message(self, message: Any) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification) and self._relist is not None:
            self._relist.set()

    async def _list(self, session: ClientSession) -> None:
        listed: list[mcp_types.Tool] = []
        cursor = None
        for _ in range(MAX_PAGES):
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await asyncio.wait_for(session.list_tools(params=params), CONNECT_SECONDS)
            listed += page.tools
            cursor = page.next_cursor
            if not cursor or len(listed) >= MAX_TOOLS:
                break
        allow = self.config.allow
        self.tools = [t for t in listed if allow is None or t.name in allow][:MAX_TOOLS]
        missing = sorted(set(allow or ()) - {t.name for t in listed})
        if missing:  # a typo in the allow-list, or a tool the server no longer has
            self._on_reactor(_log.warn, "MCP server {name} has no tools named {missing} (in its allow)",
                             name=self.name, missing=", ".join(missing))
        self._publish(self)

    # -- calls ------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """One ``tools/call``; cancelling the task sends the server ``notifications/cancelled``."""
        session = self._session
        if session is None or self.state != "ready" or self._lost is None or self._lost.is_set():
            state = "restarting" if self.state == "ready" else self.state
            raise Unavailable(f"the MCP server {self.name!r} is {state}; its tools are unavailable for now")
        try:
            result = await session.call_tool(tool, arguments)
        except MCPError as e:
            if e.code == mcp_types.CONNECTION_CLOSED and self._doubt is not None:
                self._doubt.set()  # a dead stdio server is noticed anyway; a Streamable HTTP one by the ping
                raise Unavailable(f"the MCP server {self.name!r} lost the call: {e.message}") from None
            raise ToolError(e.message) from None
        if not isinstance(result, mcp_types.CallToolResult):
            raise ToolError("the MCP server answered with something other than a result")
        return result_value(result)


def _short(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup) and error.exceptions:
        return _short(error.exceptions[0])
    if isinstance(error, asyncio.TimeoutError):
        return "no answer in time"
    return (str(error).strip().split("\n")[0] or type(error).__name__)[:200]


class _Watched:
    """The read stream passed on unchanged, with ``lost`` set when it ends (the server died)."""

    def __init__(self, source: Any, lost: asyncio.Event) -> None:
        self._source = source
        self._lost = lost
        self._group: Any = None

    async def __aenter__(self) -> Any:
        send, receive = anyio.create_memory_object_stream[Any](0)

        async def forward() -> None:
            async with send:
                try:
                    async for item in self._source:
                        await send.send(item)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
            self._lost.set()

        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(forward)
        return receive

    async def __aexit__(self, *exc: Any) -> Any:
        self._group.cancel_scope.cancel()
        return await self._group.__aexit__(*exc)


def _http_streams(url: str, headers: dict[str, str]) -> Any:
    """The Streamable HTTP transport with the configured headers on every request."""

    @asynccontextmanager
    async def streams() -> AsyncIterator[Any]:
        timeout = httpx2.Timeout(30.0, read=300.0)  # the SDK's own: a response stream may stay open
        async with httpx2.AsyncClient(headers=headers, timeout=timeout) as client:
            async with streamable_http_client(url, http_client=client, max_sse_event_size=MAX_EVENT_BYTES) as pair:
                yield pair

    return streams()


class MCPTools:
    """Every ``[[tools.mcp]]`` server, its tools put into the tool registry and kept current.

    Connected while the service is built (:meth:`connect` waits for the
    first tool lists, so a name collision stops start-up with one line);
    :meth:`close` ends each stdio server as the MCP specification says:
    stdin closed, then SIGTERM, then SIGKILL (the SDK does it, 2 s apart).
    """

    def __init__(self, config: ToolsConfig, reactor: Any) -> None:
        self._reactor = reactor
        self._bridge = AsyncioThread(reactor, "livetx-mcp")
        self.servers = [MCPServer(s, config.timeout, self._listed, reactor.callFromThread) for s in config.mcp]
        self._offer: Callable[[str, Sequence[Tool]], list[str]] | None = None
        self._starting = True

    def connect(self, offer: Callable[[str, Sequence[Tool]], list[str]]) -> None:
        """Start every server, wait for their first lists, and from now on offer their tools through ``offer``.

        ``offer(owner, tools)`` puts a server's tools in the registry and
        returns the names it refused (taken by another tool).
        """
        self._offer = offer
        for server in self.servers:
            self._bridge.submit(server.run())
        deadline = time.monotonic() + CONNECT_SECONDS  # they start side by side
        for server in self.servers:
            server.first.wait(max(0.0, deadline - time.monotonic()))
            if server.state != "ready":
                _log.warn("MCP server {name} did not start ({why}); its tools come when it does",
                          name=server.name, why=server.error or "no answer in time")
            try:
                self._reactor_offer(server)
            except ConfigError:  # start-up stops: take the started servers down with it
                self._bridge.submit(self._closing()).result(STOP_GRACE)
                self._bridge.loop.call_soon_threadsafe(self._bridge.loop.stop)
                raise
        self._starting = False

    def _listed(self, server: MCPServer) -> None:
        """On the loop: a server's tool list is new."""
        if not self._starting:
            self._reactor.callFromThread(self._reactor_offer, server)

    def _reactor_offer(self, server: MCPServer) -> None:
        assert self._offer is not None
        tools, refused = [], []
        for listed in list(server.tools):
            tool = self._tool(server, listed)
            if isinstance(tool, str):
                refused.append(tool)
            else:
                tools.append(tool)
        refused += self._offer(server.name, tools)
        if refused and self._starting:
            raise ConfigError(f"[[tools.mcp]] {server.name!r}: {refused[0]}")
        for why in refused:
            _log.warn("MCP server {name}: {why}", name=server.name, why=why)

    def _tool(self, server: MCPServer, listed: mcp_types.Tool) -> Tool | str:
        """The livetx tool for one MCP tool, or why it is refused."""
        name = tool_name(server.name, listed.name)
        schema = listed.input_schema
        if schema.get("type") != "object":
            return f"tool {listed.name!r} is refused: its inputSchema is not of type object"
        try:
            jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator).check_schema(schema)
        except jsonschema.exceptions.SchemaError as e:
            return f"tool {listed.name!r} is refused: its inputSchema is invalid: {e.message}"[:300]
        bridge, original = self._bridge, listed.name

        def call(**arguments: Any) -> Deferred[Any]:
            return bridge.call(lambda: server.call(original, arguments))

        return Tool(name, listed.description or listed.title or listed.name, schema, call, timeout=server.timeout)

    def probes(self) -> dict[str, Callable[[], Deferred[None]]]:
        """For ``/readyz``: each server's state and tool count, failing while it is not connected."""
        if self._offer is None:  # never connected: the model cannot call tools
            return {}

        def probe(server: MCPServer) -> Deferred[Any]:
            if server.state == "ready":
                return succeed({"state": "ready", "transport": server.transport, "tools": len(server.tools),
                                "restarts": server.restarts})
            return fail(Unavailable(f"{server.state}: {server.error or 'not connected yet'}"))

        return {f"mcp:{s.name}": (lambda s=s: probe(s)) for s in self.servers}  # type: ignore[misc]

    def close(self) -> Deferred[None]:
        """Disconnect from every server and stop the stdio ones; fires once they are down."""
        return self._bridge.stop(self._closing)

    async def _closing(self) -> None:
        await asyncio.sleep(0)  # each run() has begun, and knows its task
        tasks = [s.task for s in self.servers if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
