"""The live session's state machine and turn pipeline, on a fake clock."""

from __future__ import annotations

import base64
import io
import wave
from typing import Any, Callable

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from livetx.domain import Engines, Exchange
from livetx.errors import ErrorCode
from livetx.live import frames
from livetx.live.events import TurnListener
from livetx.live.rules import CLIENT_EVENTS, SESSION, STATES
from livetx.live.session import LiveSession
from livetx.providers.base import LLMError, STTError, TTSError

from .doubles import ManualSTT, ManualTTS, ScriptedLLM, b64


class Harness:
    def __init__(
        self, tts: bool = True, stt: bool | ManualSTT = True,
        listener: Callable[[Clock], TurnListener] | None = None, **engines: Any,
    ) -> None:
        self.clock = Clock()
        self.llm = ScriptedLLM()
        self.tts = ManualTTS() if tts else None
        self.stt = ManualSTT() if stt is True else stt or None
        #: Frames as sent; ``out`` is the same frames without the ``turn`` tag, as
        #: a reference client reads them, so exact comparisons check that too.
        self.raw: list[dict[str, Any]] = []
        self.out: list[dict[str, Any]] = []
        self.session = LiveSession(
            username="alice",
            engines=Engines(llm=self.llm, tts=self.tts, stt=self.stt, system_prompt="Be brief.", **engines),
            clock=self.clock,
            emit=self.record,
            listener=None if listener is None else listener(self.clock),
        )

    def record(self, frame: dict[str, Any]) -> None:
        self.raw.append(frame)
        self.out.append({k: v for k, v in frame.items() if k != "turn"})

    def send(self, t: str, **fields: Any) -> list[dict[str, Any]]:
        """Send one frame; return the frames it produced."""
        before = len(self.out)
        self.session.receive({"t": t, **fields})
        return self.out[before:]

    def kinds(self, since: int = 0) -> list[str]:
        return [f["t"] for f in self.out[since:]]

    @property
    def state(self) -> str:
        return self.session.state


def test_text_turn_streams_deltas_and_interleaves_audio() -> None:
    h = Harness()
    h.send("text_input", text="Tell me two things")
    assert h.kinds() == ["metrics", "user_msg"]
    assert h.out[0]["data"] == {"input_type": "text"}
    assert h.out[1]["data"]["text"] == "Tell me two things"
    assert h.state == "processing"

    h.llm.last.say("The first thing ", "is this. ")
    # Each delta went out at once; the finished sentence went to TTS at once.
    assert h.kinds(2) == ["bot_delta_chunk", "bot_delta_chunk"]
    assert [text for text, _ in h.tts.requests] == ["The first thing is this."]

    h.clock.advance(0.25)
    audio = h.tts.finish(0)
    h.llm.last.say("The second ")  # model still writing while audio goes out
    assert h.kinds(4) == ["metrics", "bot_text_chunk", "response", "bot_delta_chunk"]
    assert h.out[4]["data"] == {"speak_to_first_frame": 0.25}
    assert h.out[5]["data"] == {"text": "The first thing is this."}
    assert base64.b64decode(h.out[6]["data"]) == audio

    h.llm.last.say("thing is that.")
    h.llm.last.finish()
    assert h.kinds(8) == ["bot_delta_chunk", "metrics"]
    assert h.out[9]["data"]["chat_model"] == "scripted-model"
    h.tts.finish(1)
    assert h.kinds(10) == ["bot_text_chunk", "response", "metrics", "metrics", "end"]
    assert h.out[12]["data"]["tts"] == "manual_tts"
    assert "wav_to_tts_total_time" in h.out[13]["data"]  # the last metrics go before end, on purpose
    assert h.state == "idle"
    assert h.session.history[-1].reply == "The first thing is this. The second thing is that."


def test_audio_keeps_sentence_order_when_synthesis_finishes_out_of_order() -> None:
    h = Harness()
    h.send("text_input", text="go")
    h.llm.last.say("Sentence number one. ", "Sentence number two. ", "Sentence three here.")
    h.llm.last.finish()
    assert len(h.tts.requests) == 2  # concurrency 2: the third waits its turn
    h.tts.finish(1)
    assert "response" not in h.kinds()
    h.tts.finish(0)
    h.tts.finish(2)
    captions = [f["data"]["text"] for f in h.out if f["t"] == "bot_text_chunk"]
    assert captions == ["Sentence number one.", "Sentence number two.", "Sentence three here."]
    assert h.kinds()[-2:] == ["metrics", "end"]


def test_without_tts_the_whole_reply_comes_as_bot_msg() -> None:
    h = Harness(tts=False)
    h.send("text_input", text="hi")
    h.llm.last.say("Hello. ", "Nice to meet you.")
    h.llm.last.finish()
    assert "bot_text_chunk" not in h.kinds() and "response" not in h.kinds()
    bot_msg = next(f for f in h.out if f["t"] == "bot_msg")
    assert bot_msg["data"]["text"] == "Hello. Nice to meet you."
    assert h.kinds()[-3:] == ["bot_msg", "metrics", "end"]


def test_busy_session_refuses_text_and_keeps_the_running_turn() -> None:
    h = Harness(tts=False)
    h.send("text_input", text="first")
    reply = h.send("text_input", text="second")
    assert reply == [{"t": "error", "data": "Session is busy", "code": "PROCESSING_ERROR"}]
    assert len(h.llm.calls) == 1
    h.llm.last.say("still here")
    h.llm.last.finish()
    assert h.kinds()[-2:] == ["metrics", "end"]


def test_interrupt_cancels_everything_and_nothing_follows_stop_play() -> None:
    h = Harness()
    h.send("text_input", text="talk")
    h.llm.last.say("A first full sentence. ", "A second full sentence. ", "And a third")
    assert len(h.tts.requests) == 2
    h.tts.finish(0)

    after = h.send("interrupt")
    assert after == [{"t": "stop_play"}]
    assert h.llm.last.cancelled
    assert h.tts.cancelled == ["A second full sentence."]
    assert h.state == "idle"
    mark = len(h.out)
    h.llm.last.on_delta("late delta")  # a provider that ignores cancellation
    assert len(h.out) == mark

    exchange = h.session.history[-1]
    assert exchange.interrupted
    assert exchange.reply == "A first full sentence. A second full sentence. And a third"

    h.send("text_input", text="next")
    context = h.llm.last.messages
    assert context[0] == {"role": "system", "content": "Be brief."}
    assert context[-3:] == [
        {"role": "user", "content": "talk"},
        {"role": "assistant", "content": exchange.reply},
        {"role": "user", "content": "next"},
    ]


def test_a_slow_reader_holds_back_speech_until_the_socket_drains() -> None:
    h = Harness()
    h.session.pause_output()  # already full when the turn starts
    h.send("text_input", text="Tell me two things")
    h.llm.last.say("The first thing is this. ", "The second ")
    assert h.kinds(2) == ["bot_delta_chunk", "bot_delta_chunk"]  # words still reach the screen
    assert h.tts.requests == []
    h.session.resume_output()
    assert [text for text, _ in h.tts.requests] == ["The first thing is this."]
    h.session.pause_output()
    h.llm.last.say("thing is that.")
    h.llm.last.finish()
    assert len(h.tts.requests) == 1
    h.send("interrupt")  # a held-back sentence is cancelled like any other
    assert h.tts.cancelled == ["The first thing is this."]
    assert h.kinds()[-1] == "stop_play" and h.state == "idle"


def test_interrupt_when_nothing_runs_is_accepted_silently() -> None:
    h = Harness()
    assert h.send("interrupt") == []
    assert h.state == "idle"


def test_history_is_bounded() -> None:
    h = Harness(tts=False, history_turns=2)
    for i in range(5):
        h.send("text_input", text=f"q{i}")
        h.llm.last.say(f"a{i}")
        h.llm.last.finish()
    assert [e.user for e in h.session.history] == ["q3", "q4"]


def test_model_failure_reports_and_ends_the_turn() -> None:
    h = Harness()
    h.send("text_input", text="hi")
    h.llm.last.say("Partial answer. ")
    h.llm.last.done.errback(LLMError("upstream said 500"))
    assert h.tts.cancelled == ["Partial answer."]
    assert {"t": "error", "data": "upstream said 500", "code": "LLM_ERROR"} in h.out
    assert h.kinds()[-2:] == ["metrics", "end"]
    assert h.state == "idle"
    h.send("text_input", text="again")
    assert h.state == "processing"


def test_speech_failure_is_reported_once_and_text_survives() -> None:
    h = Harness()
    h.send("text_input", text="hi")
    h.llm.last.say("One sentence goes here. ", "Two sentences go here.")
    h.llm.last.finish()
    for _, d in list(h.tts.requests):
        d.errback(TTSError("speech service down"))
    errors = [f for f in h.out if f["t"] == "error"]
    assert errors == [{"t": "error", "data": "speech service down", "code": "TTS_ERROR"}]
    assert h.kinds()[-3:] == ["bot_msg", "metrics", "end"]


# -- the state table -------------------------------------------------------

VALID_FRAMES: dict[str, dict[str, Any]] = {
    "text_input": {"text": "hello"},
    "start_speaking": {"stamp": "s1"},
    "speaking_part": {"data": b64(b"\x00\x01" * 160)},
    "end_speaking": {"stamp": "s1"},
    "interrupt": {},
    "session_update": {"silence_ms": 700},
    "truncate": {"turn": 1, "audio_end_ms": 500},
}


def put_in_state(state: str) -> Harness:
    h = Harness()
    if state == "capturing":
        h.send("start_speaking", stamp="s1")
    elif state == "processing":
        h.send("text_input", text="busy")
    elif state == "interrupted":
        # Interrupted is transient here (cancellation is synchronous), so set it
        # directly to check what the table allows while a turn unwinds.
        h.send("text_input", text="busy")
        h.session.state = "interrupted"
    assert h.state == state
    return h


#: (state, event) → the error code, or None when the event is accepted.
EXPECTED: dict[tuple[str, str], str | None] = {
    ("idle", "text_input"): None,
    ("idle", "start_speaking"): None,
    ("idle", "speaking_part"): ErrorCode.INVALID_STATE,
    ("idle", "end_speaking"): ErrorCode.INVALID_STATE,
    ("idle", "interrupt"): None,
    ("capturing", "text_input"): None,
    ("capturing", "start_speaking"): None,
    ("capturing", "speaking_part"): None,
    ("capturing", "end_speaking"): None,
    ("capturing", "interrupt"): None,
    ("processing", "text_input"): ErrorCode.PROCESSING_ERROR,
    ("processing", "start_speaking"): None,
    ("processing", "speaking_part"): ErrorCode.INVALID_STATE,
    ("processing", "end_speaking"): ErrorCode.PROCESSING_ERROR,
    ("processing", "interrupt"): None,
    ("interrupted", "text_input"): None,
    ("interrupted", "start_speaking"): None,
    ("interrupted", "speaking_part"): ErrorCode.INVALID_STATE,
    ("interrupted", "end_speaking"): ErrorCode.INVALID_STATE,
    ("interrupted", "interrupt"): None,
    **{(state, "session_update"): None for state in STATES},
    **{(state, "truncate"): ErrorCode.UNKNOWN_TURN for state in STATES},  # no turn has finished yet
}


def test_table_covers_every_state_and_client_event() -> None:
    assert set(SESSION.machine.states) == set(STATES)
    assert set(EXPECTED) == {(s, e) for s in STATES for e in CLIENT_EVENTS}


@pytest.mark.parametrize("state, event", sorted(EXPECTED))
def test_every_client_event_in_every_state(state: str, event: str) -> None:
    h = put_in_state(state)
    produced = h.send(event, **VALID_FRAMES[event])
    errors = [f for f in produced if f["t"] == "error"]
    expected = EXPECTED[(state, event)]
    if expected is None:
        assert errors == []
    else:
        assert [e["code"] for e in errors] == [expected]
        assert h.state == state  # a refused frame changes nothing


def test_unknown_type_and_bad_fields_get_codes() -> None:
    h = Harness()
    assert h.send("dance")[0]["code"] == ErrorCode.UNKNOWN_MESSAGE_TYPE
    assert h.send("text_input", text="   ")[0]["code"] == ErrorCode.INVALID_MESSAGE_FORMAT
    assert h.send("text_input", text=42)[0]["code"] == ErrorCode.INVALID_MESSAGE_FORMAT
    assert h.send("text_input", message="alias works")[1]["t"] == "user_msg"


# -- voice -----------------------------------------------------------------


def test_voice_turn_assembles_wav_and_replies_to_the_transcript() -> None:
    h = Harness()
    h.send("start_speaking", stamp="seg1")
    pcm = bytes(range(256)) * 10
    h.send("speaking_part", data=b64(pcm[:1000]))
    h.send("speaking_part", data=b64(pcm[1000:]))
    h.send("end_speaking", stamp="seg1")
    assert h.kinds() == ["metrics", "metrics"]
    assert h.out[0]["data"]["input_type"] == "audio"
    assert "wav_assemble_time" in h.out[0]["data"]
    assert h.out[1]["data"] == {"stt": "manual_stt"}
    wav, pending = h.stt.requests[0]
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert w.readframes(10_000) == pcm
    pending.callback(" what time is it ")
    assert h.out[2]["t"] == "user_msg" and h.out[2]["data"]["text"] == "what time is it"
    assert h.llm.last.messages[-1] == {"role": "user", "content": "what time is it"}


def test_empty_transcript_is_reported_and_ends_the_turn_without_a_reply() -> None:
    h = Harness()
    h.send("start_speaking", stamp="s")
    h.send("end_speaking", stamp="s")
    h.stt.requests[0][1].callback("  ")
    assert h.kinds()[-2:] == ["user_msg", "end"]
    user = next(f for f in h.out if f["t"] == "user_msg")
    assert user["data"]["text"] == "" and user["data"]["code"] == "NO_SPEECH"
    assert h.state == "idle" and h.llm.calls == []


def test_bad_audio_and_stamps_are_refused_and_the_segment_survives() -> None:
    h = Harness()
    h.send("start_speaking", stamp="s")
    assert h.send("speaking_part", data="@@not base64@@")[0]["code"] == ErrorCode.INVALID_AUDIO
    assert h.send("speaking_part", data=b64(b"odd"))[0]["code"] == ErrorCode.INVALID_AUDIO
    assert h.send("speaking_part", data=7)[0]["code"] == ErrorCode.INVALID_AUDIO
    assert h.send("end_speaking", stamp="other")[0]["code"] == ErrorCode.STAMP_MISMATCH
    assert h.send("end_speaking")[0]["code"] == ErrorCode.INVALID_MESSAGE_FORMAT
    assert h.state == "capturing"
    h.send("end_speaking", stamp="s")
    assert h.state == "processing"


def test_overlong_segment_is_dropped_with_an_error() -> None:
    h = Harness(max_segment_seconds=1.0)
    h.send("start_speaking", stamp="s")
    h.send("speaking_part", data=b64(b"\x00" * 32_000))
    produced = h.send("speaking_part", data=b64(b"\x00\x00"))
    assert produced[0]["code"] == ErrorCode.AUDIO_TOO_LONG
    assert h.state == "idle"
    assert h.send("end_speaking", stamp="s")[0]["code"] == ErrorCode.INVALID_STATE


def test_no_stt_configured_is_an_error_but_the_turn_ends() -> None:
    h = Harness(stt=False)
    h.send("start_speaking", stamp="s")
    h.send("end_speaking", stamp="s")
    assert h.out[1]["code"] == ErrorCode.STT_UNAVAILABLE
    assert h.kinds()[-1] == "end" and h.state == "idle"


class RaisingSTT(ManualSTT):
    """A recognizer whose call fails before it returns a Deferred (a full pool, say)."""

    def transcribe(self, wav: bytes) -> Deferred[str]:
        raise STTError("the recognizer is gone")


def test_a_recognizer_that_raises_ends_the_turn_and_the_session_goes_on() -> None:
    h = Harness(stt=RaisingSTT())
    h.send("start_speaking", stamp="s")
    produced = h.send("end_speaking", stamp="s")
    assert produced[-2:] == [{"t": "error", "data": "the recognizer is gone", "code": STTError.code}, {"t": "end"}]
    assert h.state == "idle"
    h.send("text_input", text="hello?")
    assert h.llm.last.messages[-1] == {"role": "user", "content": "hello?"}


def test_barge_in_keeps_the_new_segment() -> None:
    h = Harness()
    h.send("text_input", text="tell a story")
    h.llm.last.say("Once upon a time. ")
    # The reference client opens the segment first, then interrupts.
    h.send("start_speaking", stamp="b1")
    h.send("speaking_part", data=b64(b"\x01\x00" * 100))
    assert h.send("interrupt") == [{"t": "stop_play"}]
    assert h.state == "capturing"
    h.send("speaking_part", data=b64(b"\x02\x00" * 100))
    h.send("end_speaking", stamp="b1")
    wav, _ = h.stt.requests[0]
    with wave.open(io.BytesIO(wav)) as w:
        assert w.getnframes() == 200


def test_interrupt_during_transcription_cancels_it() -> None:
    h = Harness()
    h.send("start_speaking", stamp="s")
    h.send("end_speaking", stamp="s")
    pending = h.stt.requests[0][1]
    assert h.send("interrupt") == [{"t": "stop_play"}]
    assert pending.called and h.state == "idle"


def test_close_stops_the_turn_and_sends_nothing_more() -> None:
    h = Harness()
    h.send("text_input", text="hi")
    h.llm.last.say("Some words here. ")
    mark = len(h.out)
    h.session.close()
    assert h.llm.last.cancelled and h.tts.cancelled == ["Some words here."]
    assert len(h.out) == mark


# -- stored memory -----------------------------------------------------------


class SlowMemory:
    """A store whose history arrives when the test says so."""

    def __init__(self) -> None:
        self.loaded: Deferred[list[Exchange]] = Deferred()
        self.kept: list[tuple[Exchange, str, dict[str, Any]]] = []

    def recall(self, turns: int, max_bytes: int | None = None) -> Deferred[list[Exchange]]:
        # Paused on an inner Deferred, as a real query chain is.
        return succeed(None).addCallback(lambda _: self.loaded)

    def remember(self, exchange: Exchange, input_type: str, metrics: dict[str, Any]) -> Deferred[None]:
        self.kept.append((exchange, input_type, metrics))
        return succeed(None)


def with_memory() -> tuple[Harness, SlowMemory]:
    h = Harness(tts=False)
    memory = SlowMemory()
    h.session = LiveSession(
        username="alice", engines=h.session._engines, clock=h.clock, emit=h.record, memory=memory
    )
    return h, memory


def test_first_turn_waits_for_the_stored_history() -> None:
    h, memory = with_memory()
    h.send("text_input", text="and now?")
    assert h.kinds() == ["metrics", "user_msg"] and h.llm.calls == []
    memory.loaded.callback([Exchange("earlier", "stored reply")])
    assert h.llm.last.messages[1:] == [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "stored reply"},
        {"role": "user", "content": "and now?"},
    ]
    h.llm.last.say("Fine.")
    h.llm.last.finish()
    (exchange, input_type, metrics), = memory.kept
    assert exchange == Exchange("and now?", "Fine.") and input_type == "text"
    assert metrics["chat_model"] == "scripted-model"


def test_interrupt_while_history_loads_starts_nothing() -> None:
    h, memory = with_memory()
    h.send("text_input", text="hello")
    assert h.send("interrupt") == [{"t": "stop_play"}]
    memory.loaded.callback([])
    assert h.llm.calls == [] and h.state == "idle"
    h.send("text_input", text="again")
    assert h.llm.last.messages[-1] == {"role": "user", "content": "again"}


# -- interrupted lasts until the turn is unwound ------------------------------


class SlowWrites:
    """A store whose writes finish when the test says so."""

    def __init__(self) -> None:
        self.writes: list[tuple[Exchange, Deferred[None]]] = []

    def recall(self, turns: int, max_bytes: int | None = None) -> Deferred[list[Exchange]]:
        return succeed([])

    def remember(self, exchange: Exchange, input_type: str, metrics: dict[str, Any]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.writes.append((exchange, d))
        return d

    def revise(self, exchange: Exchange) -> None:
        pass


def harness_with(memory: SlowWrites) -> Harness:
    h = Harness(tts=False)
    h.session = LiveSession(
        username="alice", engines=Engines(llm=h.llm, tts=None, stt=h.stt), clock=h.clock, emit=h.record,
        memory=memory,
    )
    return h


def test_end_goes_out_once_the_turn_is_stored() -> None:
    memory = SlowWrites()
    h = harness_with(memory)
    h.send("text_input", text="keep me")
    h.llm.last.say("Kept.")
    h.llm.last.finish()
    assert h.kinds()[-2:] == ["bot_msg", "metrics"] and h.state == "processing"
    (exchange, stored), = memory.writes
    assert exchange == Exchange("keep me", "Kept.")
    stored.callback(None)
    assert h.kinds()[-1] == "end" and h.state == "idle"


def test_interrupted_lasts_until_the_partial_reply_is_stored_and_queues_one_turn() -> None:
    memory = SlowWrites()
    h = harness_with(memory)
    h.send("text_input", text="talk")
    h.llm.last.say("Half of it")
    assert h.send("interrupt") == [{"t": "stop_play"}]  # at once
    assert h.state == "interrupted" and h.llm.last.cancelled
    assert h.send("start_speaking", stamp="s") == []  # capture goes on
    assert h.send("text_input", text="next") == []  # taken, and waits
    assert h.send("text_input", text="and another")[0]["code"] == ErrorCode.PROCESSING_ERROR
    assert len(h.llm.calls) == 1 and h.state == "interrupted"
    (exchange, stored), = memory.writes
    assert exchange == Exchange("talk", "Half of it", interrupted=True)
    stored.callback(None)  # unwound: the queued turn starts, with the interrupted one in its context
    assert h.state == "processing" and len(h.llm.calls) == 2
    assert h.llm.last.messages[-3:] == [
        {"role": "user", "content": "talk"},
        {"role": "assistant", "content": "Half of it"},
        {"role": "user", "content": "next"},
    ]


def test_turn_over_fires_when_the_turn_ends_however_it_ends() -> None:
    h = Harness(tts=False)
    assert h.session.turn_over().called  # nothing runs
    h.send("text_input", text="hi")
    over = h.session.turn_over()
    h.llm.last.say("Hello.")
    assert not over.called
    h.llm.last.finish()
    assert over.called and h.kinds()[-1] == "end"
    h.send("start_speaking", stamp="s")
    h.send("end_speaking", stamp="s")  # transcribing
    over = h.session.turn_over()
    h.session.close()
    assert over.called and h.stt.requests[-1][1].called  # cancelled, and let go of
