"""A small MCP server written with the official SDK, for the tests: ``python -m tests.mcp_fixture_server``.

``stdio JOURNAL`` serves on stdin/stdout (livetx starts it); ``http PORT
JOURNAL`` serves Streamable HTTP on 127.0.0.1:PORT/mcp. Each tool appends
what happened to it, as JSON lines, to the JOURNAL file, so a test can check
on the server's side that a call ran, or was cancelled, or never came.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ImageContent, TextContent

#: A result far over what livetx passes to the model.
HUGE_CHARS = 1_000_000

server = MCPServer("livetx-test")
journal_path = sys.argv[-1]


def note(*event: Any) -> None:
    with open(journal_path, "a") as f:
        f.write(json.dumps([os.getpid(), *event]) + "\n")
        f.flush()


@server.tool()
def add(a: int, b: int, ctx: Context) -> int:
    """Adds two whole numbers."""
    request = ctx.request_context.request  # over HTTP: the request, with the headers livetx sent
    note("add", a, b, request.headers.get("x-test") if request is not None else None)
    return a + b


@server.tool()
async def slow(seconds: float) -> str:
    """Waits, then says so."""
    note("slow started", seconds)
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        note("slow cancelled")
        raise
    note("slow finished")
    return f"waited {seconds} s"


@server.tool()
def fail() -> CallToolResult:
    """Always answers with an error result."""
    note("fail")
    return CallToolResult(content=[TextContent(text="the lights are on fire")], is_error=True)


@server.tool()
def huge() -> str:
    """A result of a million characters."""
    note("huge")
    return "x" * HUGE_CHARS


@server.tool()
def picture() -> list[Any]:
    """A text and a PNG image."""
    note("picture")
    return [TextContent(text="a red dot"), ImageContent(data=base64.b64encode(b"\x89PNG" + b"\0" * 300).decode(),
                                                        mime_type="image/png")]


@server.tool()
def crash() -> str:
    """Ends the server's process in the middle of the call."""
    note("crash")
    time.sleep(0.2)
    os._exit(3)


@server.tool()
async def grow(ctx: Context) -> str:
    """Adds the tool ``extra`` and tells the client its tool list changed."""
    note("grow")

    def extra(word: str) -> str:
        """Says the word back."""
        note("extra", word)
        return word.upper()

    server.add_tool(extra)
    await ctx.session.send_tool_list_changed()
    return "grown"


def look_up(word: str) -> str:
    """Two tools whose names differ only in a character livetx cannot offer."""
    return word


def stubborn(signum: int, frame: Any) -> None:
    note("sigterm ignored")


if __name__ == "__main__":
    note("started", sys.argv[1])
    if os.environ.get("MCP_FIXTURE_COLLIDE"):  # "look.up" and "look_up" are both <server>_look_up
        server.add_tool(look_up, name="look.up")
        server.add_tool(look_up, name="look_up")
    if os.environ.get("MCP_FIXTURE_STUBBORN"):  # stays after stdin closes and ignores SIGTERM
        signal.signal(signal.SIGTERM, stubborn)
    if sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
    note("stdin closed")
    while os.environ.get("MCP_FIXTURE_STUBBORN"):
        time.sleep(1)
