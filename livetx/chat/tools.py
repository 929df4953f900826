"""Tool calls of a chat turn as AstrBot's web chat shows them.

AstrBot's web chat sends a call and its result as ``plain`` events with
``chain_type`` ``tool_call`` and ``tool_call_result`` and the details as
JSON text in ``data`` (``{id, name, args, ts}`` and ``{id, ts, result}``),
so its clients draw tool cards from them; livetx adds ``name`` and ``ok``
to the result.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson
from twisted.internet.interfaces import IReactorTime

from livetx.live.events import TurnListener
from livetx.providers.base import Message
from livetx.store import StoredMessage
from livetx.tools import ToolCall, ToolOutcome
from livetx.tools.record import ToolTrail, replay, steps_of

#: publish(kind, data, chain_type): sends one event of the turn.
Publish = Callable[[str, Any, str], None]


class ChatToolEvents:
    """A :class:`livetx.tools.ToolListener` for one chat turn; each call is told to the turn's listener too."""

    def __init__(self, clock: IReactorTime, reply: list[str], publish: Publish, listener: TurnListener) -> None:
        self.trail = ToolTrail(clock)
        self._clock = clock
        self._reply = reply
        self._publish = publish
        self._listener = listener

    def tool_started(self, call: ToolCall, arguments: Any) -> None:
        self.trail.started(sum(map(len, self._reply)), call, arguments)
        data = {"id": call.id, "name": call.name, "args": arguments, "ts": self._clock.seconds()}
        self._publish("plain", orjson.dumps(data).decode(), "tool_call")
        self._listener.tool_called(call.id, call.name)

    def tool_finished(self, call: ToolCall, outcome: ToolOutcome) -> None:
        data = {**self.trail.finished(call, outcome), "ts": self._clock.seconds()}
        self._publish("plain", orjson.dumps(data).decode(), "tool_call_result")
        self._listener.tool_finished(call.id, call.name, outcome.ok, outcome.status, outcome.seconds)

    def filler_due(self, text: str) -> None:
        """Nothing to say aloud in a chat; the tool_call event already shows the wait."""


def history_messages(message: StoredMessage) -> list[Message]:
    """A stored message for the model: a reply that called tools comes back as its calls."""
    steps = steps_of(message.parts) if message.role == "assistant" else ()
    if steps:
        return replay(message.text, steps)
    return [{"role": message.role, "content": message.text}] if message.text else []
