"""The board's own tools, over MCP on its WebSocket (the firmware's docs/mcp-protocol.md).

The server is the MCP client here: when ``hello`` says ``features.mcp``, it
sends ``initialize``, then ``tools/list`` (following ``nextCursor``), each a
JSON-RPC 2.0 request in an ``mcp`` message's ``payload``; the board answers
in kind. Each tool it lists (``self.audio_speaker.set_volume``,
``self.light.set_rgb``...) becomes a :class:`livetx.tools.Tool` offered to
the model beside the configured ones, so the same rules hold: arguments
checked against its ``inputSchema``, ``[tools] timeout``, cancelled by an
interrupt, counted in metrics and kept in history. A call goes out as
``tools/call``; the result's text content is the tool's value, and
``isError`` (or a JSON-RPC error) makes the call fail.

Tool names are made fit for the model's function names (letters, digits,
``_`` and ``-``): ``self.light.set_rgb`` is offered as ``self_light_set_rgb``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from livetx import __version__
from livetx.tools import Tool

_log = Logger()

#: The MCP revision the firmware answers to.
PROTOCOL_VERSION = "2024-11-05"
#: A board lists a handful of tools; more than this is not a board's.
MAX_TOOLS = 64
#: ``tools/list`` pages followed at most.
MAX_PAGES = 8


class DeviceToolError(Exception):
    """The board said the call failed (``isError``, or a JSON-RPC error)."""


def model_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]


class DeviceMcp:
    """One board's MCP client: the handshake, its tools, and the calls in flight."""

    def __init__(self, send: Callable[[dict[str, Any]], None], on_tools: Callable[[list[Tool]], None]) -> None:
        self._send = send
        self._on_tools = on_tools
        self._next_id = 0
        self._pending: dict[int, Deferred[Any]] = {}
        self._tools: list[Tool] = []
        self._pages = 0

    def start(self) -> None:
        self._request("initialize", {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                                     "clientInfo": {"name": "livetx", "version": __version__}}
                      ).addCallback(lambda _: self._list(None))

    def _request(self, method: str, params: dict[str, Any]) -> Deferred[Any]:
        self._next_id += 1
        ident = self._next_id
        d: Deferred[Any] = Deferred(lambda _: self._forget(ident))
        self._pending[ident] = d
        self._send({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        return d

    def _forget(self, ident: int) -> None:
        """A cancelled call (an interrupt, a timeout): the board's late answer will find nothing waiting."""
        self._pending.pop(ident, None)

    def _list(self, cursor: str | None) -> None:
        self._pages += 1
        self._request("tools/list", {"cursor": cursor} if cursor else {}).addCallbacks(
            self._listed, lambda f: _log.warn("The board's tools/list failed: {e}", e=f.getErrorMessage()))

    def _listed(self, result: Any) -> None:
        tools = result.get("tools") if isinstance(result, dict) else None
        for entry in tools if isinstance(tools, list) else []:
            if len(self._tools) < MAX_TOOLS and isinstance(entry, dict) and isinstance(entry.get("name"), str):
                self._tools.append(self._tool(entry))
        cursor = result.get("nextCursor") if isinstance(result, dict) else None
        if isinstance(cursor, str) and cursor and self._pages < MAX_PAGES:
            self._list(cursor)
            return
        self._on_tools(list(self._tools))

    def _tool(self, entry: dict[str, Any]) -> Tool:
        name = entry["name"]
        schema = entry.get("inputSchema")
        if not isinstance(schema, dict):
            schema = {"type": "object", "properties": {}}

        def call(**arguments: Any) -> Deferred[Any]:
            return self._request("tools/call", {"name": name, "arguments": arguments}).addCallback(_content)

        return Tool(name=model_name(name), description=str(entry.get("description", ""))[:1024],
                    parameters=schema, call=call)

    def receive(self, payload: dict[str, Any]) -> None:
        """A JSON-RPC message from the board: an answer to one of our requests (others are logged)."""
        ident = payload.get("id")
        d = self._pending.pop(ident, None) if isinstance(ident, int) else None
        if d is None:
            _log.debug("An MCP message from the board that answers nothing asked: {payload}", payload=payload)
            return
        error = payload.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            d.errback(DeviceToolError(str(message)[:300]))
        else:
            d.callback(payload.get("result"))

    def closed(self) -> None:
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(DeviceToolError("the board disconnected"))


def _content(result: Any) -> Any:
    """A ``tools/call`` result as the tool's value: its text, or :class:`DeviceToolError`."""
    if not isinstance(result, dict):
        raise DeviceToolError("the board's answer is not a tools/call result")
    texts = [c.get("text", "") for c in result.get("content") or [] if isinstance(c, dict) and c.get("type") == "text"]
    text = "\n".join(texts)
    if result.get("isError"):
        raise DeviceToolError(text[:300] or "the board said the call failed")
    return text
