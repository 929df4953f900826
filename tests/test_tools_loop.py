"""The tool loop, driven by hand with a fake clock: rounds, limits, failures, cancellation."""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from livetx.config import ConfigError, ToolsConfig
from livetx.providers.base import Message
from livetx.tools import Tool, ToolCall, ToolOutcome
from livetx.tools.builtins import CalculationError, calculate
from livetx.tools.loop import ANSWER_NOW, ToolingModel
from livetx.providers.openai_calls import ToolCallAccumulator
from livetx.tools.record import ToolTrail, replay, reply_parts, steps_of
from livetx.tools.registry import ToolRegistry, load_tools


class Round:
    def __init__(self, messages: Sequence[Message], on_delta: Callable[[str], None], tools: Any) -> None:
        self.messages, self.on_delta, self.tools = list(messages), on_delta, tools
        self.cancelled = False
        self.done: Deferred[list[ToolCall]] = Deferred(lambda _: setattr(self, "cancelled", True))

    def call(self, *calls: tuple[str, Any], text: str = "") -> None:
        if text:
            self.on_delta(text)
        self.done.callback([
            ToolCall(f"c{i}", name, args if isinstance(args, str) else json.dumps(args))
            for i, (name, args) in enumerate(calls)
        ])

    def answer(self, text: str) -> None:
        self.on_delta(text)
        self.done.callback([])


class Model:
    model = "scripted"

    def __init__(self) -> None:
        self.rounds: list[Round] = []

    def stream_tools(self, messages: Sequence[Message], on_delta: Callable[[str], None], tools: Any) -> Deferred[list[ToolCall]]:
        self.rounds.append(Round(messages, on_delta, tools))
        return self.rounds[-1].done


class Events:
    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []

    def tool_started(self, call: ToolCall, arguments: Any) -> None:
        self.log.append(("started", call.name))

    def tool_finished(self, call: ToolCall, outcome: ToolOutcome) -> None:
        self.log.append(("finished", (call.name, outcome.ok, outcome.status, outcome.result)))

    def filler_due(self, text: str) -> None:
        self.log.append(("filler", text))


def slow_tool(pending: list[Deferred[Any]], name: str = "slow") -> Tool:
    def call() -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending.append(d)
        return d

    return Tool(name, "waits for the test", {"type": "object", "properties": {}}, call)


def setup(*extra: Tool, **config: Any) -> tuple[Clock, Model, ToolingModel, Events, list[str], Deferred[None]]:
    clock = Clock()
    clock.advance(1_700_000_000)
    settings = ToolsConfig(**{"enabled": ["clock", "calculator"], **config})
    registry = load_tools(settings, clock)
    registry = ToolRegistry([registry.get("clock"), registry.get("calculator"), *extra])  # type: ignore[list-item]
    model = Model()
    tooling = ToolingModel(model, registry, settings, clock)
    events, deltas = Events(), []
    done = tooling.stream([{"role": "user", "content": "hi"}], deltas.append, events)
    return clock, model, tooling, events, deltas, done


def test_a_round_trip_sends_results_back_and_asks_again() -> None:
    clock, model, _, events, deltas, done = setup()
    assert [t["function"]["name"] for t in model.rounds[0].tools] == ["clock", "calculator"]
    model.rounds[0].call(("calculator", {"expression": "17 * 23"}), text="Let me see. ")
    assert events.log == [("started", "calculator"), ("finished", ("calculator", True, "ok", 391))]
    second = model.rounds[1].messages
    assert second[-2]["tool_calls"][0]["function"] == {"name": "calculator", "arguments": '{"expression": "17 * 23"}'}
    assert second[-2]["content"] == "Let me see. "
    assert second[-1] == {"role": "tool", "tool_call_id": "c0", "content": "391"}
    model.rounds[1].answer("It is 391.")
    assert done.called and deltas == ["Let me see. ", "It is 391."]


def test_after_max_rounds_the_model_must_answer_without_tools() -> None:
    _, model, _, events, _, done = setup(max_rounds=2)
    model.rounds[0].call(("clock", {}))
    model.rounds[1].call(("clock", {}))
    last = model.rounds[2]
    assert last.tools is None and last.messages[-1] == {"role": "system", "content": ANSWER_NOW}
    last.call(("clock", {}))  # a model that calls anyway: nothing runs
    assert done.called and [e for e in events.log if e[0] == "started"] == [("started", "clock")] * 2


@pytest.mark.parametrize("call, message", [
    (("lights", {}), "unknown tool 'lights'; available: clock, calculator"),
    (("calculator", "{not json"), "arguments are not valid JSON"),
    (("calculator", {"expr": "1"}), "invalid arguments"),
    (("calculator", {"expression": "__import__('os')"}), "failed: only numbers"),
])
def test_refusals_and_failures_are_reported_to_the_model(call: tuple[str, Any], message: str) -> None:
    _, model, _, events, _, _ = setup()
    model.rounds[0].call(call)
    name, ok, _, result = events.log[-1][1]
    assert not ok and result.startswith(message)
    assert model.rounds[1].messages[-1]["content"] == f"Error: {result}"


def test_a_slow_tool_times_out_and_the_filler_is_due_once() -> None:
    pending: list[Deferred[Any]] = []
    clock, model, _, events, _, _ = setup(slow_tool(pending), timeout=5.0, filler_after_ms=1500)
    model.rounds[0].call(("slow", {}), ("slow", {}))
    clock.advance(1.4)
    assert ("filler", "One moment.") not in events.log
    clock.advance(0.2)
    assert events.log.count(("filler", "One moment.")) == 1
    clock.advance(4)
    assert [e[1][2] for e in events.log if e[0] == "finished"] == ["timeout", "timeout"]
    assert model.rounds[1].messages[-1]["content"] == "Error: timed out after 5 s"


def test_cancel_cancels_running_tools_and_drops_late_results() -> None:
    pending: list[Deferred[Any]] = []
    clock, model, _, events, deltas, done = setup(slow_tool(pending))
    model.rounds[0].call(("slow", {}))
    done.cancel()
    assert events.log[-1] == ("finished", ("slow", False, "cancelled", "cancelled"))
    pending[0].callback("late")  # dropped: nothing reported, no new round
    clock.advance(60)
    assert len(model.rounds) == 1 and events.log[-1][1][2] == "cancelled"
    failures: list[Any] = []
    done.addErrback(failures.append)
    assert failures[0].check(CancelledError)


def test_no_call_of_a_cancelled_generation_starts() -> None:
    _, model, _, events, _, done = setup()
    done.cancel()
    assert model.rounds[0].cancelled
    done.addErrback(lambda f: f.trap(CancelledError))
    assert events.log == []


def test_clock_tells_the_configured_zone() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)  # 2023-11-14 22:13:20 UTC
    tool = load_tools(ToolsConfig(enabled=["clock"], timezone="Asia/Tokyo"), clock).get("clock")
    assert tool is not None
    assert tool.call() == {"iso": "2023-11-15T07:13:20+09:00", "date": "2023-11-15", "time": "07:13",
                           "weekday": "Wednesday", "timezone": "Asia/Tokyo"}


@pytest.mark.parametrize("expression, value", [("17*23", 391), ("(1+2)/4", 0.75), ("2^10", 1024), ("-3 % 2", 1)])
def test_calculator(expression: str, value: float) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize("expression", [
    "9**9**9", "10**1000", "1/0", "x+1", "len('a')", "[1]", "1e308*10", "(-1)**0.5", "1" * 300, "True+1",
])
def test_calculator_refuses(expression: str) -> None:
    with pytest.raises(CalculationError):
        calculate(expression)


@pytest.mark.parametrize("config, message", [
    (ToolsConfig(enabled=["lights"]), "[tools] unknown tool 'lights'; available: calculator, clock"),
    (ToolsConfig(timezone="Mars/Olympus"), "[tools] timezone 'Mars/Olympus' is not a known time zone"),
    (ToolsConfig(max_rounds=0), "[tools] max_rounds must be at least 1"),
])
def test_start_up_mistakes_are_one_line(config: ToolsConfig, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_tools(config, Clock())
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_stored_parts_replay_as_tool_messages() -> None:
    trail = ToolTrail(Clock())
    call = ToolCall("c1", "clock", "{}")
    trail.started(6, call, {})
    trail.finished(call, ToolOutcome(True, {"time": "10:00"}, 0.01))
    reply = "Sure. It is ten."
    parts = reply_parts(reply, trail.steps)
    assert [p["type"] for p in parts] == ["plain", "tool_call", "plain"]
    assert steps_of(parts) == tuple(trail.steps)
    assert replay(reply, steps_of(parts)) == [
        {"role": "assistant", "content": "Sure. ",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"time":"10:00"}'},
        {"role": "assistant", "content": "It is ten."},
    ]
    assert trail.metrics()["tool_calls"] == 1


def test_streamed_tool_call_pieces_are_joined_by_index() -> None:
    calls = ToolCallAccumulator()
    pieces = [
        {"index": 0, "id": "a", "type": "function", "function": {"name": "clock", "arguments": ""}},
        {"index": 1, "id": "b", "type": "function", "function": {"name": "calculator", "arguments": '{"ex'}},
        {"index": 0, "function": {"arguments": "{}"}},
        {"index": 1, "function": {"arguments": 'pression": "1+1"}'}},
    ]
    for piece in pieces:
        calls.feed({"choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]})
    assert calls.calls() == [ToolCall("a", "clock", "{}"), ToolCall("b", "calculator", '{"expression": "1+1"}')]


def test_a_bug_in_the_listener_fails_the_turn_instead_of_hanging_it() -> None:
    _, model, _, events, _, done = setup()

    def broken(call: ToolCall, arguments: Any) -> None:
        raise RuntimeError("listener bug")

    events.tool_started = broken  # type: ignore[method-assign]
    model.rounds[0].call(("clock", {}))
    failures: list[Any] = []
    done.addErrback(failures.append)
    assert failures[0].check(RuntimeError)
