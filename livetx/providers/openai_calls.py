"""Streamed ``tool_calls`` of the chat-completions API, put back together.

A service streams each call in pieces: the first delta of a call carries
its ``index``, ``id`` and function ``name``, the later ones only the index
and a slice of the ``arguments`` JSON text. The pieces are joined by index.
"""

from __future__ import annotations

from typing import Any

from livetx.providers.base import LLMError, ToolCall

#: More calls than this in one reply is a runaway model, not a plan.
MAX_CALLS = 16
#: Arguments longer than this are refused before they are parsed.
MAX_ARGUMENTS = 64 * 1024


class ToolCallAccumulator:
    """Feed it each chunk's parsed JSON; :meth:`calls` gives the finished calls in order."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def feed(self, payload: dict[str, Any]) -> None:
        for choice in payload.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            pieces = delta.get("tool_calls") if isinstance(delta, dict) else None
            if isinstance(pieces, list):
                for piece in pieces:
                    self._add(piece)

    def _add(self, piece: Any) -> None:
        if not isinstance(piece, dict):
            raise LLMError("chat model sent a tool call that is not an object")
        index = piece.get("index", len(self._calls))
        if not isinstance(index, int):
            raise LLMError("chat model sent a tool call without an index")
        call = self._calls.get(index)
        if call is None:
            if len(self._calls) >= MAX_CALLS:
                raise LLMError(f"chat model asked for more than {MAX_CALLS} tool calls at once")
            call = self._calls[index] = {"id": "", "name": "", "arguments": []}
        function = piece.get("function") or {}
        if isinstance(piece.get("id"), str) and not call["id"]:
            call["id"] = piece["id"]
        if isinstance(function.get("name"), str):
            call["name"] += function["name"]
        if isinstance(function.get("arguments"), str):
            call["arguments"].append(function["arguments"])
            if sum(map(len, call["arguments"])) > MAX_ARGUMENTS:
                raise LLMError("chat model sent tool arguments that are too long")

    def calls(self) -> list[ToolCall]:
        return [
            ToolCall(c["id"] or f"call_{index}", c["name"], "".join(c["arguments"]))
            for index, c in sorted(self._calls.items())
        ]
