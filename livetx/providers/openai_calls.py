"""Streamed ``tool_calls`` of the chat-completions API, put back together.

A service streams each call in pieces: the first delta of a call carries
its ``index``, ``id`` and function ``name``, the later ones only the index
and a slice of the ``arguments`` JSON text. The pieces are joined by index.

Everything a model streams here is bounded as it arrives, in linear time: the
number of calls, of pieces, the arguments' length (kept as a running total,
not re-summed per piece) and the name (OpenAI's own rule: at most 64
characters of ``[a-zA-Z0-9_-]``), which is refused on the piece that breaks
the rule, before it is joined, echoed or sent anywhere.
"""

from __future__ import annotations

import re
from typing import Any

from livetx.providers.base import LLMError, ToolCall

#: More calls than this in one reply is a runaway model, not a plan.
MAX_CALLS = 16
#: Arguments longer than this are refused before they are parsed.
MAX_ARGUMENTS = 64 * 1024
#: Pieces of tool calls in one reply (empty ones too: they add nothing to the length, but cost work).
MAX_PIECES = 16 * 1024
#: A tool's name, as OpenAI's API allows it.
MAX_NAME = 64
_NAME = re.compile(r"[a-zA-Z0-9_-]*")


class ToolCallAccumulator:
    """Feed it each chunk's parsed JSON; :meth:`calls` gives the finished calls in order."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}
        self._pieces = 0

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
        self._pieces += 1
        if self._pieces > MAX_PIECES:
            raise LLMError(f"chat model sent more than {MAX_PIECES} pieces of tool calls")
        index = piece.get("index", len(self._calls))
        if not isinstance(index, int):
            raise LLMError("chat model sent a tool call without an index")
        call = self._calls.get(index)
        if call is None:
            if len(self._calls) >= MAX_CALLS:
                raise LLMError(f"chat model asked for more than {MAX_CALLS} tool calls at once")
            call = self._calls[index] = {"id": "", "name": "", "arguments": [], "length": 0}
        function = piece.get("function") or {}
        if isinstance(piece.get("id"), str) and not call["id"]:
            call["id"] = piece["id"]
        name = function.get("name")
        if isinstance(name, str):
            if len(call["name"]) + len(name) > MAX_NAME or not _NAME.fullmatch(name):
                raise LLMError(f"chat model sent a tool name that is not 1-{MAX_NAME} of a-z, A-Z, 0-9, _ and -")
            call["name"] += name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call["length"] += len(arguments)
            if call["length"] > MAX_ARGUMENTS:
                raise LLMError("chat model sent tool arguments that are too long")
            call["arguments"].append(arguments)

    def calls(self) -> list[ToolCall]:
        return [
            ToolCall(c["id"] or f"call_{index}", c["name"], "".join(c["arguments"]))
            for index, c in sorted(self._calls.items())
        ]
