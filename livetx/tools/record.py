"""What a turn keeps of its tool calls: for the client, the store, the metrics and later turns.

A call is kept in the shape AstrBot's web chat stores it, a message part
``{"type": "tool_call", "tool_calls": [{id, name, args, ts, result,
finished_ts, ok}]}``, placed among the reply's plain parts where the model
made it. Later turns get it back as the chat-completions messages it came
from: an assistant message with ``tool_calls``, then one ``tool`` message
per call.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import orjson
from twisted.internet.interfaces import IReactorTime

from livetx.errors import ToolStatus
from livetx.providers.base import Message
from livetx.tools import ToolCall, ToolOutcome

#: Where in the reply text a call was made, and its record.
ToolStep = tuple[int, dict[str, Any]]


def model_text(ok: bool, result: Any) -> str:
    """A call's result as the ``tool`` message tells the model."""
    if not ok:
        return f"Error: {result}"
    return result if isinstance(result, str) else orjson.dumps(result).decode()


class ToolTrail:
    """Follows one turn's calls; the turn says how much reply text came before each."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.steps: list[ToolStep] = []
        self._records: dict[str, dict[str, Any]] = {}
        self.outcomes: list[tuple[str, ToolOutcome]] = []

    def __bool__(self) -> bool:
        return bool(self.steps)

    def started(self, offset: int, call: ToolCall, arguments: Any) -> dict[str, Any]:
        """The client's view of a call that starts: ``{id, name, arguments}``."""
        record = {"id": call.id, "name": call.name, "args": arguments, "ts": self._clock.seconds()}
        self._records[call.id] = record
        self.steps.append((offset, record))
        return {"id": call.id, "name": call.name, "arguments": arguments}

    def finished(self, call: ToolCall, outcome: ToolOutcome) -> dict[str, Any]:
        """The client's view of a call that ended: ``{id, name, ok, result}``."""
        record = self._records.get(call.id)
        if record is not None:
            record.update(result=outcome.result, ok=outcome.ok, finished_ts=self._clock.seconds())
        self.outcomes.append((call.name, outcome))
        return {"id": call.id, "name": call.name, "ok": outcome.ok, "result": outcome.result}

    def metrics(self) -> dict[str, Any]:
        """The turn's tool figures (chat mode's ``agent_stats``)."""
        return tool_figures((name, o.ok, o.status, o.seconds) for name, o in self.outcomes)


def tool_figures(calls: Iterable[tuple[str, bool, str, float]]) -> dict[str, Any]:
    """A turn's tool figures from its calls' (name, ok, status, seconds), for ``metrics``."""
    calls = list(calls)
    latency: dict[str, float] = {}
    for name, _, _, seconds in calls:
        latency[name] = round(max(latency.get(name, 0.0), seconds), 6)
    return {
        "tool_calls": len(calls),
        "tool_failures": sum(not ok for _, ok, _, _ in calls),
        "tool_timeouts": sum(status == ToolStatus.TIMEOUT for _, _, status, _ in calls),
        "tool_latency": latency,
        "tools": [{"name": n, "status": st, "seconds": round(sec, 6)} for n, _, st, sec in calls],
    }


def reply_parts(reply: str, steps: Sequence[ToolStep]) -> list[dict[str, Any]]:
    """The stored parts of a reply: its text split where each call was made."""
    parts: list[dict[str, Any]] = []
    at = 0
    for offset, record in steps:
        offset = min(offset, len(reply))
        if offset > at:
            parts.append({"type": "plain", "text": reply[at:offset]})
            at = offset
        parts.append({"type": "tool_call", "tool_calls": [record]})
    if at < len(reply) or not parts:
        parts.append({"type": "plain", "text": reply[at:]})
    return parts


def steps_of(parts: Iterable[dict[str, Any]]) -> tuple[ToolStep, ...]:
    """The calls in stored parts, with where each was made in the plain text."""
    steps: list[ToolStep] = []
    at = 0
    for part in parts:
        if part.get("type") == "plain":
            at += len(part.get("text", ""))
        elif part.get("type") == "tool_call":
            steps.extend((at, r) for r in part.get("tool_calls") or () if isinstance(r, dict) and "id" in r)
    return tuple(steps)


def replay(reply: str, steps: Sequence[ToolStep]) -> list[Message]:
    """A reply with its calls as the chat-completions messages a model expects back."""
    messages: list[Message] = []
    at, i = 0, 0
    while i < len(steps):
        offset = min(steps[i][0], len(reply))
        group = []
        while i < len(steps) and min(steps[i][0], len(reply)) == offset:
            group.append(steps[i][1])
            i += 1
        messages.append({
            "role": "assistant", "content": reply[at:offset],
            "tool_calls": [{"id": r["id"], "type": "function",
                            "function": {"name": r.get("name", ""), "arguments": _arguments(r.get("args"))}}
                           for r in group],
        })
        messages += [{"role": "tool", "tool_call_id": r["id"],
                      "content": model_text(bool(r.get("ok")), r.get("result", "no result"))} for r in group]
        at = offset
    if reply[at:] or not messages:
        messages.append({"role": "assistant", "content": reply[at:]})
    return messages


def _arguments(args: Any) -> str:
    return args if isinstance(args, str) else orjson.dumps(args if args is not None else {}).decode()
