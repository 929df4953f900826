"""Server-side tools a model may call during a turn.

A tool is defined on the server only: a name, a description, a JSON Schema
for its arguments and a callable. Clients never name or define one; they
only see the calls the model made and their results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from twisted.internet.defer import Deferred

from livetx.providers.base import Message

#: What a tool's callable returns: a JSON-serialisable value, or a Deferred of one.
ToolResult = Any


@dataclass(frozen=True)
class Tool:
    """One tool as a package provides it (see docs/tools.md).

    ``call`` takes the validated arguments as keyword arguments. Returning
    a Deferred lets a tool wait on the network without blocking the server;
    cancelling that Deferred must stop the work, because an interrupted
    turn cancels its running tools.
    """

    name: str
    description: str
    #: A JSON Schema (an ``object`` schema) the arguments are checked against.
    parameters: dict[str, Any]
    call: Callable[..., ToolResult | Deferred[ToolResult]]
    #: Seconds one call may run; None: ``[tools] timeout`` (an MCP server's own ``timeout``).
    timeout: float | None = None


class ToolError(Exception):
    """A tool's answer that it failed, worded for the model (an MCP ``isError`` result).

    The loop reports it as ``failed: <message>`` like any exception, but as
    an expected outcome: no traceback in the log.
    """


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for: ``arguments`` is the model's raw JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolOutcome:
    """How a call ended; ``result`` is the value, or a short error text when not ``ok``."""

    ok: bool
    result: Any
    seconds: float = 0.0
    #: ``ok``, ``failed``, ``refused`` (unknown tool, bad arguments), ``timeout`` or ``cancelled``.
    status: str = "ok"


class ToolListener(Protocol):
    """What a turn hears of the tools its model calls, in the order things happen."""

    def tool_started(self, call: ToolCall, arguments: Any) -> None:
        """A call begins (``arguments`` parsed, or the raw text when it is not JSON)."""

    def tool_finished(self, call: ToolCall, outcome: ToolOutcome) -> None:
        """A call ended, for any reason (cancellation included)."""

    def filler_due(self, text: str) -> None:
        """A call has run long: the turn should say ``text`` (at most once a turn)."""


@runtime_checkable
class ToolCallingModel(Protocol):
    """A chat model that can be offered tools (OpenAI-compatible function calling).

    Models without it (the echo model) are never offered tools.
    """

    model: str

    def stream_tools(
        self, messages: Sequence[Message], on_delta: Callable[[str], None],
        tools: Sequence[dict[str, Any]] | None,
    ) -> Deferred[list[ToolCall]]:
        """Stream a reply offering ``tools``; fire with the calls asked for (none: it answered)."""
