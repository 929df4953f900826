"""A live turn whose model calls tools, with a fake clock: frames, filler, interrupt, what is kept."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from livetx.config import ToolsConfig
from livetx.live.events import MetricsFrames, Outcome
from livetx.live.turn import Turn
from livetx.providers.base import Voices
from livetx.testing.openai_server import tone
from livetx.tools.loop import ToolingModel
from livetx.tools.registry import ToolRegistry

from .test_tools_loop import Model, slow_tool


metrics: MetricsFrames
speech: ToneTTS


class ToneTTS:
    name = "tone"

    def __init__(self) -> None:
        self.said: list[str] = []

    def synthesize(self, text: str, voice: str | None = None) -> Deferred[bytes]:
        self.said.append(text)
        return succeed(tone(0.5))

    def voices(self) -> Voices:
        return Voices(("tone",), "tone")


def start(**config: Any) -> tuple[Clock, Model, list[Deferred[Any]], list[dict[str, Any]], Turn]:
    global metrics, speech
    clock, model, pending, sent = Clock(), Model(), [], []
    speech = ToneTTS()
    metrics = MetricsFrames(sent.append)
    settings = ToolsConfig(**{"enabled": ["slow"], "filler_after_ms": 1000, **config})
    llm = ToolingModel(model, ToolRegistry([slow_tool(pending)]), settings, clock)
    turn = Turn(clock=clock, llm=llm, tts=speech, emit=sent.append,
                messages=[{"role": "user", "content": "go"}], started_at=0.0, listener=metrics)
    turn.start()
    return clock, model, pending, sent, turn


def test_filler_is_spoken_but_not_part_of_the_reply() -> None:
    clock, model, pending, sent, turn = start()
    model.rounds[0].call(("slow", {}), text="Let me check that for you")  # spoken before the call runs
    clock.advance(1.0)
    pending[0].callback({"answer": 1})
    model.rounds[1].answer("It is done, all of it.")
    result = turn.done.result
    kinds = [f["t"] for f in sent if f["t"] not in ("metrics", "response")]
    assert kinds == ["bot_delta_chunk", "bot_text_chunk", "tool_call", "bot_text_chunk", "tool_result",
                     "bot_delta_chunk", "bot_text_chunk"]
    captions = [f["data"]["text"] for f in sent if f["t"] == "bot_text_chunk"]
    assert captions == ["Let me check that for you", "One moment.", "It is done, all of it."]
    assert result.reply == "Let me check that for youIt is done, all of it."
    # Playback: sentence (0.5 s), filler (0.5 s), answer (0.5 s); the filler moves time, not text.
    assert result.heard(1000) == "Let me check that for you"
    assert result.heard(1500) == result.reply
    assert [(at, r["name"], r["ok"]) for at, r in result.tools] == [(25, "slow", True)]
    # The turn tells its listener; the metrics frame with the tool figures comes from that.
    metrics.ended(Outcome.OK, 2.0)
    figures = sent[-2]["data"]
    assert figures["tool_calls"] == 1 and figures["tools"] == [{"name": "slow", "status": "ok", "seconds": 1.0}]


def test_emoji_stay_in_the_reply_and_its_captions_but_are_not_spoken() -> None:
    """As AstrBot's Live API: the text frames carry the model's words as written; TTS gets no emoji."""
    _, model, _, sent, turn = start()
    model.rounds[0].answer("It is done, all of it 🎉. 😂😂😂😂😂😂")
    assert turn.done.result.reply == "It is done, all of it 🎉. 😂😂😂😂😂😂"
    assert [f["data"]["text"] for f in sent if f["t"] == "bot_text_chunk"] == ["It is done, all of it 🎉."]
    assert speech.said == ["It is done, all of it ."]


def test_interrupt_reports_the_cancelled_call_and_keeps_it() -> None:
    clock, model, pending, sent, turn = start(filler_after_ms=0)
    model.rounds[0].call(("slow", {}))
    result = turn.interrupt()
    assert sent[-1] == {"t": "tool_result", "data": {"id": "c0", "name": "slow", "ok": False, "result": "cancelled"}}
    assert result.interrupted and result.tools[0][1]["result"] == "cancelled"
    count = len(sent)
    clock.advance(60)
    assert len(sent) == count and len(model.rounds) == 1
