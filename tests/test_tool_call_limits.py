"""What a model may stream as tool calls (issue 27.3 and 27.4): bounded as it arrives, in linear time.

A hostile or broken upstream once sent 40,000 empty ``arguments`` pieces
(each re-summing all before it: quadratic) and a ``name`` of 100 pieces of
512 KiB, which was joined, echoed into events and into the follow-up request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted

from livetx.providers.base import LLMError
from livetx.providers.openai_calls import MAX_ARGUMENTS, MAX_NAME, MAX_PIECES, ToolCallAccumulator

from . import tool_fixtures
from .support import connect
from .test_http_api import API
from .test_live_ws import LIVE
from .test_tools_ws import config, once


class Measured(str):
    """A piece of arguments that counts how often its length is taken."""

    measured = 0

    def __len__(self) -> int:
        Measured.measured += 1
        return super().__len__()


def piece(index: int = 0, **function: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, "function": function}]}}]}


def test_each_piece_of_arguments_is_measured_once() -> None:
    calls = ToolCallAccumulator()
    calls.feed(piece(name="calculator"))
    Measured.measured = 0
    for _ in range(2000):
        calls.feed(piece(arguments=Measured("")))
    # Re-summing every piece so far on each one measures about 2,000,000 times.
    assert Measured.measured <= 2 * 2000


def test_pieces_are_capped_even_when_empty() -> None:
    calls = ToolCallAccumulator()
    for _ in range(MAX_PIECES):
        calls.feed(piece(arguments=""))
    with pytest.raises(LLMError, match="pieces"):
        calls.feed(piece(arguments=""))


def test_arguments_are_capped_across_pieces() -> None:
    calls = ToolCallAccumulator()
    calls.feed(piece(name="calculator", arguments="x" * MAX_ARGUMENTS))
    with pytest.raises(LLMError, match="too long"):
        calls.feed(piece(arguments="x"))


@pytest.mark.parametrize("pieces", [
    ["a" * (MAX_NAME + 1)],                   # one piece past the cap
    ["a" * 40, "b" * 40],                     # the cap passed by joining
    ["calc ulator"], ["calc\nulator"], ["é"],  # characters outside the rule
])
def test_a_name_is_refused_on_the_piece_that_breaks_the_rule(pieces: list[str]) -> None:
    calls = ToolCallAccumulator()
    *fine, breaking = pieces
    for name in fine:
        calls.feed(piece(name=name))
    with pytest.raises(LLMError, match="tool name"):
        calls.feed(piece(name=breaking))


def test_a_name_of_64_allowed_characters_is_accepted() -> None:
    calls = ToolCallAccumulator()
    name = ("Az09_-" * 11)[:MAX_NAME]
    calls.feed(piece(name=name[:30]))
    calls.feed(piece(name=name[30:], arguments="{}"))
    assert calls.calls()[0].name == name


@pytest.fixture
def tool_package(tmp_path: Path) -> Iterator[None]:
    with tool_fixtures.installed(tmp_path / "site"):
        yield


@pytest_twisted.ensureDeferred
async def test_a_huge_streamed_name_fails_the_turn_cleanly_over_sse_and_on_a_socket(
    livetx: Any, openai: Any, tool_package: None
) -> None:
    name = "calculator" + "x" * 512 * 1024
    openai.tool_calls = once({"id": "call_big", "name": name, "arguments": {"expression": "1+1"}})
    server = await livetx(config(openai.base_url))
    api = API(server)
    events = await api.chat(username="ann", message="1+1?")
    assert [e["type"] for e in events][-2:] == ["error", "end"] and events[-2]["code"] == "LLM_ERROR"
    assert "tool name" in events[-2]["data"]
    assert all(len(json.dumps(e)) < 4096 for e in events)  # the name was never echoed
    assert len(openai.requests_to("/chat/completions")) == 1  # nor sent back to the model

    client = await connect(server.url(LIVE, token=server.token("ann")))
    frames = await client.turn("1+1?")
    errors = [f for f in frames if f["t"] == "error"]
    assert errors[0]["code"] == "LLM_ERROR" and frames[-1]["t"] in ("end", "stop_play")
    assert all(len(json.dumps(f)) < 4096 for f in frames)
    await client.close_and_wait()
