"""Server-side tools a model may call during a turn.

A tool is defined on the server only: a name, a description, a JSON Schema
for its arguments and a callable. Clients never name or define one; they
only see the calls the model made and their results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from twisted.internet.defer import Deferred

from livetx.errors import ToolStatus
from livetx.providers.base import ChatModel, Message

# A call and a model that makes calls are engine interfaces, defined with the others.
from livetx.providers.base import ToolCall as ToolCall
from livetx.providers.base import ToolCallingModel as ToolCallingModel

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
class ToolOutcome:
    """How a call ended; ``result`` is the value, or a short error text when not ``ok``."""

    ok: bool
    result: Any
    seconds: float = 0.0
    #: A :class:`livetx.errors.ToolStatus` (a ``str``).
    status: str = ToolStatus.OK


class ToolListener(Protocol):
    """What a turn hears of the tools its model calls, in the order things happen."""

    def tool_started(self, call: ToolCall, arguments: Any) -> None:
        """A call begins (``arguments`` parsed, or the raw text when it is not JSON)."""

    def tool_finished(self, call: ToolCall, outcome: ToolOutcome) -> None:
        """A call ended, for any reason (cancellation included)."""

    def filler_due(self, text: str) -> None:
        """A call has run long: the turn should say ``text`` (at most once a turn)."""


@runtime_checkable
class ToolingChatModel(Protocol):
    """A chat model that runs the tools its model calls (:class:`livetx.tools.loop.ToolingModel`).

    The one typed way a turn learns that its model takes tools, and hands
    it the :class:`ToolListener` that hears of each call.
    """

    model: str
    offers_tools: bool

    def stream(
        self, messages: Sequence[Message], on_delta: Callable[[str], None], listener: ToolListener | None = None,
    ) -> Deferred[None]:
        """Stream the reply across rounds of tool calls; each call is told to ``listener``."""


def offers_tools(llm: ChatModel) -> bool:
    """The model runs tools: a turn keeps a trail of its calls and reports them."""
    return isinstance(llm, ToolingChatModel)


def stream_reply(
    llm: ChatModel, messages: Sequence[Message], on_delta: Callable[[str], None], listener: ToolListener | None,
) -> Deferred[None]:
    """Stream a reply; a model that runs tools tells ``listener`` of each call, any other has none to tell."""
    if isinstance(llm, ToolingChatModel):
        return llm.stream(messages, on_delta, listener)
    return llm.stream(messages, on_delta)
