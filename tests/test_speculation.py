"""Speculative reply on a fake clock: the model started at the first short pause sends nothing until
the endpoint commits it, and is cancelled, unsent and unstored, when the speaker goes on."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from livetx.config import ToolsConfig
from livetx.errors import ErrorCode
from livetx.domain import Engines
from livetx.live.events import MetricsFrames, Outcome
from livetx.live.session import LiveSession
from livetx.live.speculation import Speculation, speculate, taken_by
from livetx.live.turn import Turn
from livetx.metrics import ServerMetrics
from livetx.providers.base import LLMError
from livetx.tools.loop import ToolingModel
from livetx.tools.registry import ToolRegistry

from .test_session import Harness, SlowWrites
from .test_talk import quiet, voiced
from .test_tools_loop import Model, slow_tool
from .test_turn_taking import LocalSTT, kinds, listen_on, speak, talking

#: What a speculative generation must never send before it is committed.
REPLY_FRAMES = {"bot_delta_chunk", "bot_text_chunk", "response", "bot_msg", "tool_call", "tool_result"}


def speculating(**options: Any) -> Harness:
    h = talking(**options)
    (updated,) = h.send("session_update", speculative=True)
    assert updated["data"]["speculative"] is True
    return h


def paused(h: Harness, text: str, ms: int = 900) -> list[dict[str, Any]]:
    """``ms`` of speech, a pause long enough for its decode (not for the endpoint), transcribed as ``text``."""
    produced = speak(h, voiced(ms) + quiet(300))
    h.stt.requests[-1][1].callback(text)
    return produced + h.raw[len(h.raw) - 1 :]


def test_the_model_starts_at_the_pause_and_the_endpoint_commits_what_it_wrote() -> None:
    metrics = ServerMetrics()
    h = speculating(listener=lambda clock: metrics.opened("/ws", "live", "alice"))
    paused(h, "turn on the lights")
    (call,) = h.llm.calls  # before the endpoint: the same messages the turn will send
    assert call.messages == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "turn on the lights"}]
    before = len(h.raw)
    call.say("Done, ", "the lights are on. ")
    assert h.raw[before:] == [] and h.tts.requests == []  # held: no delta, no speech
    produced = speak(h, quiet(600))
    assert kinds(produced) == ["speech_stopped", "metrics", "metrics", "user_msg",
                               "bot_delta_chunk", "bot_delta_chunk"]
    assert [f["data"]["text"] for f in produced[-2:]] == ["Done, ", "the lights are on. "]
    assert {f["turn"] for f in produced[1:]} == {1}
    assert [text for text, _ in h.tts.requests] == ["Done, the lights are on."]
    assert len(h.llm.calls) == 1  # no second model call: the turn took the first
    h.llm.last.finish()
    h.tts.finish(0)
    listen_on(h)
    (figures,) = [f["data"] for f in h.raw if f["t"] == "metrics" and "speculations_committed" in f["data"]]
    assert figures == {"speculations_committed": 1, "speculations_discarded": 0}
    assert [(e.user, e.reply) for e in h.session.history] == [("turn on the lights", "Done, the lights are on. ")]
    assert dict((tuple(k), v) for k, v in metrics.snapshot()["livetx_speculations"]) == {("committed",): 1}


def test_a_call_over_before_the_endpoint_is_replayed_whole_then_ends_the_model_part() -> None:
    h = speculating()
    paused(h, "hello")
    h.llm.last.say("Hi there. ")
    h.llm.last.finish()
    assert h.tts.requests == [] and "bot_delta_chunk" not in kinds(h.raw)
    produced = speak(h, quiet(600))
    assert kinds(produced)[-3:] == ["user_msg", "bot_delta_chunk", "metrics"]  # the model's part is over
    assert produced[-1]["data"]["llm_ttft"] == 0.0 and h.tts.requests[0][0] == "Hi there."
    h.tts.finish(0)
    assert "end" in kinds(listen_on(h)) and [e.reply for e in h.session.history] == ["Hi there. "]


def test_speech_after_the_pause_discards_the_reply_unsent_and_the_next_pause_starts_another() -> None:
    metrics = ServerMetrics()
    h = speculating(listener=lambda clock: metrics.opened("/ws", "live", "alice"))
    paused(h, "please call my sister")
    first = h.llm.last
    first.say("Calling your sister now. ")
    produced = speak(h, voiced(600))  # the speaker goes on, before any endpoint
    assert first.cancelled and produced == []
    paused(h, "please call my sister at seven")
    second = h.llm.last
    assert len(h.llm.calls) == 2 and second.messages[-1]["content"] == "please call my sister at seven"
    second.say("Calling her at seven. ")
    speak(h, quiet(600))
    second.finish()
    h.tts.finish(0)
    listen_on(h)
    sent = [(f["t"], f["data"] if f["t"] == "response" else f["data"]["text"]) for f in h.raw if f["t"] in REPLY_FRAMES]
    assert [kind for kind, _ in sent] == ["bot_delta_chunk", "bot_text_chunk", "response"]
    assert sent[:2] == [("bot_delta_chunk", "Calling her at seven. "), ("bot_text_chunk", "Calling her at seven.")]
    assert [f["data"]["text"] for f in h.raw if f["t"] == "user_msg"] == ["please call my sister at seven"]
    assert [(e.user, e.reply) for e in h.session.history] == [("please call my sister at seven",
                                                               "Calling her at seven. ")]
    (figures,) = [f["data"] for f in h.raw if f["t"] == "metrics" and "speculations_discarded" in f["data"]]
    assert figures == {"speculations_committed": 1, "speculations_discarded": 1}
    counted = dict((tuple(k), v) for k, v in metrics.snapshot()["livetx_speculations"])
    assert counted == {("discarded",): 1, ("committed",): 1}


def test_a_model_failure_before_the_endpoint_is_the_turns_failure_once_committed() -> None:
    h = speculating()
    paused(h, "hello")
    h.llm.last.done.errback(LLMError("upstream said 500"))
    assert "error" not in kinds(h.raw)  # held like its deltas: nobody asked yet
    produced = speak(h, quiet(600))
    assert kinds(produced)[3:5] == ["user_msg", "error"] and produced[4]["code"] == "LLM_ERROR"
    assert kinds(listen_on(h))[-1] == "end" and len(h.llm.calls) == 1


def test_a_dropped_utterance_discards_its_reply() -> None:
    h = speculating()
    paused(h, "turn on")
    call = h.llm.last
    call.say("Turning on. ")
    h.send("session_update", turn_detection="client")  # the half-heard utterance is dropped
    assert call.cancelled and not [f for f in h.raw if f["t"] in REPLY_FRAMES] and h.session.history == ()


def test_closing_discards_a_running_speculation() -> None:
    h = speculating()
    paused(h, "turn on")
    h.session.close()
    assert h.llm.last.cancelled


def test_a_voice_turn_queued_behind_an_interrupted_one_lets_go_of_its_reply_when_it_never_starts() -> None:
    """Typed text while the person speaks, then an interrupt: their utterance ends while the interrupted
    turn is still being stored, and waits. If the socket closes then, its reply begun at the pause goes too."""
    memory = SlowWrites()
    h = Harness(stt=LocalSTT())
    h.session = LiveSession(username="alice", clock=h.clock, emit=h.record, memory=memory,
                            engines=Engines(llm=h.llm, tts=None, stt=h.stt, system_prompt="Be brief."))
    h.send("session_update", turn_detection="server", vad="webrtc", min_speech_ms=210, silence_ms=600,
           preroll_ms=90, end_of_turn="silence", speculative=True)
    paused(h, "turn on the lights")
    (ahead,) = h.llm.calls
    h.send("text_input", text="hi")
    assert h.send("interrupt") == [{"t": "stop_play"}] and h.state == "interrupted"  # storing, slowly
    assert kinds(speak(h, quiet(600))) == ["speech_stopped"]  # the voice turn waits behind it
    assert not ahead.cancelled
    h.session.close()
    assert ahead.cancelled


def test_off_by_default_and_strictly_checked() -> None:
    h = talking()
    assert h.session.settings.speculative is False
    paused(h, "turn on the lights")
    assert h.llm.calls == []  # nothing before the endpoint
    for value in ("yes", 1, None):
        (error,) = h.send("session_update", speculative=value)
        assert error["code"] == ErrorCode.INVALID_SETTING and "speculative must be one of false, true" in error["data"]
    assert h.session.settings.speculative is False
    server_default = talking(speculative=True)  # [llm] speculative, through the engines
    assert server_default.session.settings.speculative is True
    paused(server_default, "turn on the lights")
    assert len(server_default.llm.calls) == 1


def test_after_a_barge_in_the_new_request_is_begun_with_the_interrupted_exchange_in_its_context() -> None:
    h = speculating()
    h.send("text_input", text="tell me a story")
    h.llm.last.say("Once upon a time")
    assert kinds(speak(h, voiced(600)))[:2] == ["speech_started", "stop_play"]
    assert h.state == "capturing"  # the interrupted turn is stored: nothing else runs
    speak(h, quiet(300))
    h.stt.requests[-1][1].callback("stop")
    assert len(h.llm.calls) == 2 and h.llm.last.messages[1:] == [
        {"role": "user", "content": "tell me a story"}, {"role": "assistant", "content": "Once upon a time"},
        {"role": "user", "content": "stop"}]


# -- the model as a turn that takes a speculation sees it ------------------------


class Holder:
    def __init__(self, ahead: Speculation | None) -> None:
        self.ahead = ahead


def test_a_turn_that_asks_something_else_discards_the_speculation_and_asks_the_model() -> None:
    h = Harness()
    sent: list[dict[str, Any]] = []
    listener = MetricsFrames(sent.append)
    asked = [{"role": "user", "content": "turn on"}]
    holder = Holder(speculate(h.llm, asked, listener))
    llm = taken_by(h.llm, holder)
    assert holder.ahead is None and taken_by(h.llm, holder) is h.llm
    deltas: list[str] = []
    llm.stream([{"role": "user", "content": "turn on the lights"}], deltas.append)
    first, second = h.llm.calls
    assert first.cancelled and not second.cancelled and second.messages[-1]["content"] == "turn on the lights"
    first.say("stale")  # a late delta of the cancelled call goes nowhere
    second.say("fresh")
    assert deltas == ["fresh"]
    listener.ended(Outcome.OK, 1.0)
    assert sent[-1]["data"] == {"speculations_committed": 0, "speculations_discarded": 1}


def test_cancelling_the_turns_call_cancels_the_speculative_request() -> None:
    h = Harness()
    asked = [{"role": "user", "content": "hi"}]
    llm = taken_by(h.llm, Holder(speculate(h.llm, asked, MetricsFrames(lambda frame: None))))
    call = llm.stream(asked, lambda text: None)
    call.addErrback(lambda failure: None)
    call.cancel()
    assert h.llm.last.cancelled and len(h.llm.calls) == 1


def test_a_model_with_tools_runs_no_tool_before_the_turn_takes_its_first_round() -> None:
    clock, model, pending = Clock(), Model(), []  # type: list[Deferred[Any]]
    config = ToolsConfig(enabled=["slow"])
    llm = ToolingModel(model, ToolRegistry([slow_tool(pending)]), config, clock)
    asked = [{"role": "user", "content": "wait"}]
    holder = Holder(speculate(llm, asked, MetricsFrames(lambda frame: None)))
    (first,) = model.rounds
    assert [t["function"]["name"] for t in first.tools] == ["slow"]
    first.call(("slow", {}), text="Let me wait. ")
    assert pending == []  # the model asked for the tool; nothing ran
    sent: list[Any] = []
    turn = Turn(clock=clock, llm=taken_by(llm, holder), tts=None, emit=sent.append, messages=asked,
                started_at=0.0)
    turn.start()
    assert len(model.rounds) == 1 and len(pending) == 1  # the turn took the round; its call runs now
    assert [f["t"] for f in sent] == ["bot_delta_chunk", "tool_call"]
    pending[0].callback({"waited": True})
    model.rounds[1].answer("Done.")
    assert turn.done.result.reply == "Let me wait. Done."
