"""Talk mode at human speed, on a fake clock: the transcript decoded at the pause, a request
in two breaths kept whole, and each voice turn's stages from the end of speech."""

from __future__ import annotations

import array
import math
import random
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from livetx.audio import read_wav, to_wav
from livetx.errors import ErrorCode
from livetx.live import echo
from livetx.live.events import VOICE_STAGES
from livetx.live.streaming_stt import PAUSE_MS
from livetx.metrics import ServerMetrics

from .doubles import ManualSTT, b64
from .test_session import Harness
from .test_talk import FRAME, quiet, voiced


class LocalSTT(ManualSTT):
    """A recognizer that says it decodes locally, as Whisper does: talk mode decodes at pauses."""

    decodes_at_pauses = True


def talking(stt: ManualSTT | None = None, **options: Any) -> Harness:
    """Talk mode on WebRTC's detector (it takes the tones for speech), ending an utterance after 600 ms."""
    h = Harness(stt=stt or LocalSTT(), **options)
    h.send("session_update", turn_detection="server", vad="webrtc", min_speech_ms=210, silence_ms=600, preroll_ms=90)
    return h


def speak(h: Harness, pcm: bytes) -> list[dict[str, Any]]:
    """Stream ``pcm`` at real time on the harness's clock, 20 ms a frame; the frames it produced."""
    before = len(h.raw)
    for i in range(0, len(pcm), FRAME):
        h.clock.advance(0.02)
        h.session.receive({"t": "speaking_part", "data": b64(pcm[i : i + FRAME])})
    return h.raw[before:]


def listen_on(h: Harness) -> list[dict[str, Any]]:
    """The microphone streams silence on past ``continue_ms``: a finished voice turn, held until
    the user can no longer go on with its request, is stored and ended."""
    return speak(h, quiet(1500))


def kinds(produced: list[dict[str, Any]]) -> list[str]:
    return [f["t"] for f in produced]


def pcm_of(wav: bytes) -> bytes:
    return read_wav(wav)[0]


# -- the transcript decoded at the pause --------------------------------------


def test_the_decode_started_at_the_pause_is_the_final_transcript() -> None:
    h = talking()
    speak(h, quiet(300) + voiced(900) + quiet(PAUSE_MS - 40))
    assert h.stt.requests == []  # a gap between words starts nothing
    speak(h, quiet(200))  # the pause (after the detector's own hangover of up to 150 ms)
    ((wav, early),) = h.stt.requests  # the pause: the utterance so far, decoded now
    assert pcm_of(wav).startswith(quiet(90) + voiced(900)[:9600])
    early.callback(" turn on the lights ")
    assert h.raw[-1] == {"t": "user_partial", "data": {"text": "turn on the lights"}}
    produced = speak(h, quiet(600))
    assert kinds(produced) == ["speech_stopped", "metrics", "metrics", "user_msg"]
    assert produced[-1]["data"]["text"] == "turn on the lights" and produced[-1]["turn"] == 1
    assert len(h.stt.requests) == 1  # no second decode after the endpoint
    assert h.llm.last.messages[-1] == {"role": "user", "content": "turn on the lights"}


def test_a_decode_still_running_at_the_endpoint_is_waited_for_not_repeated() -> None:
    h = talking()
    speak(h, voiced(900) + quiet(900))
    ((_, early),) = h.stt.requests
    assert h.state == "processing" and "user_msg" not in kinds(h.raw)
    early.callback("lights on")
    assert h.raw[-1]["t"] == "user_msg" and h.raw[-1]["data"]["text"] == "lights on"
    assert "user_partial" not in kinds(h.raw)  # the utterance was over: no partial after its end
    assert len(h.stt.requests) == 1


def test_speech_after_the_pause_makes_that_decode_a_partial_and_the_next_pause_decodes_again() -> None:
    h = talking()
    speak(h, voiced(600) + quiet(300))
    ((_, first),) = h.stt.requests
    speak(h, voiced(600) + quiet(300))
    assert len(h.stt.requests) == 2 and first.called  # the stale decode was cancelled
    ((wav, second),) = h.stt.requests[1:]
    assert len(pcm_of(wav)) > 32 * (600 + 300 + 600)
    second.callback("turn on the lights please")
    speak(h, quiet(600))
    assert h.raw[-1]["t"] == "user_msg" and h.raw[-1]["data"]["text"] == "turn on the lights please"
    assert len(h.stt.requests) == 2


def test_without_a_pause_before_the_endpoint_the_whole_segment_is_decoded() -> None:
    h = talking()
    speak(h, voiced(600))
    h.clock.advance(0.6)  # the microphone went quiet: the stall ends the utterance, no pause was heard
    ((wav, final),) = h.stt.requests
    assert h.state == "processing" and pcm_of(wav).endswith(voiced(600)[-640:])
    final.callback("lights")
    assert h.raw[-1]["data"]["text"] == "lights"


def test_a_failed_early_decode_falls_back_to_decoding_the_segment() -> None:
    h = talking()
    speak(h, voiced(600) + quiet(300))
    h.stt.requests[0][1].errback(RuntimeError("decoder crashed"))
    speak(h, quiet(600))
    assert len(h.stt.requests) == 2 and h.state == "processing"
    h.stt.requests[1][1].callback("lights")
    assert h.raw[-1]["data"]["text"] == "lights"


def test_a_recognizer_that_is_paid_per_call_is_not_asked_at_pauses() -> None:
    h = talking(stt=ManualSTT())
    speak(h, voiced(600) + quiet(300))
    assert h.stt.requests == []
    speak(h, quiet(600))
    assert len(h.stt.requests) == 1


# -- a request in two breaths -------------------------------------------------


def first_half(h: Harness, say: str = "please call my sister at") -> bytes:
    """The first breath: heard, endpointed and (for now) a turn; returns its audio."""
    speak(h, voiced(900) + quiet(900))
    wav, early = h.stt.requests[0]
    return pcm_of(wav)


def test_speech_resumed_before_the_transcript_continues_the_same_request() -> None:
    h = talking()
    head = first_half(h)
    transcribing = h.stt.requests[0][1]
    assert h.state == "processing"
    produced = speak(h, voiced(600))
    assert kinds(produced) == ["speech_started"] and transcribing.called  # no stop_play: nothing played
    assert h.state == "capturing" and h.session.history == ()
    speak(h, quiet(900))
    wav, final = h.stt.requests[-1]
    assert pcm_of(wav).startswith(head) and len(pcm_of(wav)) > len(head) + 32 * 600  # both halves, one decode
    final.callback("please call my sister at seven tonight")
    assert [(f["data"]["text"], f["turn"]) for f in h.raw if f["t"] == "user_msg"] == [
        ("please call my sister at seven tonight", 1)]
    assert h.llm.last.messages[-1] == {"role": "user", "content": "please call my sister at seven tonight"}


def test_speech_resumed_before_the_first_audio_withdraws_the_reply_and_resends_user_msg() -> None:
    h = talking()
    first_half(h)
    h.stt.requests[0][1].callback("please call my sister at")
    h.llm.last.say("Calling your sister")
    generation = h.llm.last
    produced = speak(h, voiced(600))
    assert kinds(produced) == ["speech_started"] and generation.cancelled and h.tts.cancelled == []
    speak(h, quiet(900))
    h.stt.requests[-1][1].callback("please call my sister at seven tonight")
    h.llm.last.say("Calling her at seven. ")
    h.tts.finish(0)
    h.llm.last.finish()
    listen_on(h)
    msgs = [(f["data"]["text"], f["turn"]) for f in h.raw if f["t"] == "user_msg"]
    assert msgs == [("please call my sister at", 1), ("please call my sister at seven tonight", 1)]
    assert [f["turn"] for f in h.raw if f["t"] == "end"] == [1] and "stop_play" not in kinds(h.raw)
    assert len(h.llm.calls) == 2 and h.llm.last.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "please call my sister at seven tonight"},
    ]
    (kept,) = h.session.history
    assert (kept.user, kept.reply, kept.interrupted) == (
        "please call my sister at seven tonight", "Calling her at seven. ", False)


def test_speech_resumed_within_continue_ms_after_the_first_audio_stops_play_and_continues_the_request() -> None:
    h = talking()
    head = first_half(h)  # 900 ms of silence after the speech: inside the 1200 ms window
    h.stt.requests[0][1].callback("please call my sister")
    h.llm.last.say("Calling your sister. ", "Dialling")
    h.tts.finish(0)
    assert "response" in kinds(h.raw)  # the reply's first audio went out
    generation = h.llm.last
    produced = speak(h, voiced(600))
    assert kinds(produced) == ["speech_started", "stop_play"] and produced[1]["turn"] == 1
    assert generation.cancelled and h.session.history == ()
    speak(h, quiet(900))
    wav, final = h.stt.requests[-1]
    assert pcm_of(wav).startswith(head) and len(pcm_of(wav)) > len(head) + 32 * 600  # both halves, one decode
    final.callback("please call my sister at seven in the evening")
    h.llm.last.say("Calling her at seven. ")
    h.tts.finish(1)
    h.llm.last.finish()
    listen_on(h)
    assert [(f["data"]["text"], f["turn"]) for f in h.raw if f["t"] == "user_msg"] == [
        ("please call my sister", 1), ("please call my sister at seven in the evening", 1)]
    assert [f["turn"] for f in h.raw if f["t"] == "end"] == [1]
    assert h.llm.last.messages[-1] == {"role": "user", "content": "please call my sister at seven in the evening"}
    (kept,) = h.session.history
    assert (kept.user, kept.reply, kept.interrupted) == (
        "please call my sister at seven in the evening", "Calling her at seven. ", False)


def test_a_complete_reply_is_held_unstored_while_its_request_may_go_on() -> None:
    h = talking()
    head = first_half(h)
    h.stt.requests[0][1].callback("please call my sister")
    h.llm.last.say("Calling your sister. ")
    h.tts.finish(0)
    h.llm.last.finish()  # all of the reply went out: the client still plays it
    assert "end" not in kinds(h.raw) and h.state == "processing" and h.session.history == ()
    produced = speak(h, voiced(600))  # 900 ms after the last word: within continue_ms
    assert kinds(produced) == ["speech_started", "stop_play"] and produced[1]["turn"] == 1
    speak(h, quiet(900))
    wav, final = h.stt.requests[-1]
    assert pcm_of(wav).startswith(head)
    final.callback("please call my sister at seven")
    h.llm.last.say("Calling her at seven. ")
    h.tts.finish(1)
    h.llm.last.finish()
    assert "end" in kinds(listen_on(h))
    assert [f["turn"] for f in h.raw if f["t"] == "end"] == [1]
    assert [e.user for e in h.session.history] == ["please call my sister at seven"]


def answered_whole(h: Any) -> None:
    """The first half heard as "what time is it", and its one-sentence reply sent whole."""
    first_half(h)
    h.stt.requests[0][1].callback("what time is it")
    h.llm.last.say("It is noon. ")
    h.tts.finish(0)
    h.llm.last.finish()


def test_a_complete_reply_is_stored_and_ended_once_continue_ms_is_over() -> None:
    h = talking()
    answered_whole(h)
    assert "end" not in kinds(h.raw)
    produced = listen_on(h)
    assert kinds(produced)[-1] == "end" and h.state == "idle"
    assert [(e.user, e.interrupted) for e in h.session.history] == [("what time is it", False)]
    produced = speak(h, voiced(600) + quiet(900))
    assert "stop_play" not in kinds(produced) and h.stt.requests[-1][0] != h.stt.requests[0][0]


def test_an_interrupt_while_a_complete_reply_is_held_stores_it_and_unwinds() -> None:
    h = talking()
    answered_whole(h)
    assert h.state == "processing" and h.session.history == ()
    produced = h.send("interrupt")
    assert kinds(produced)[0] == "stop_play" and h.state == "idle"
    assert [(e.user, e.reply) for e in h.session.history] == [("what time is it", "It is noon. ")]
    assert "end" not in kinds(listen_on(h))  # the hold's call was cancelled: nothing ends twice


def test_speech_after_the_first_audio_and_past_continue_ms_is_a_barge_in_and_both_stay_in_history() -> None:
    h = talking()
    first_half(h)
    h.stt.requests[0][1].callback("tell me a story")
    h.llm.last.say("Once upon a time. ", "There was")
    h.tts.finish(0)
    speak(h, quiet(600))  # 900 + 600 ms of silence since the speech ended: past the 1200 ms window
    produced = speak(h, voiced(600))
    assert kinds(produced) == ["speech_started", "stop_play"] and produced[1]["turn"] == 1
    speak(h, quiet(900))
    (wav, final) = h.stt.requests[-1]
    assert len(pcm_of(wav)) < 32 * (90 + 600 + 700)  # only the new utterance
    final.callback("stop")
    assert [(f["data"]["text"], f["turn"]) for f in h.raw if f["t"] == "user_msg"] == [
        ("tell me a story", 1), ("stop", 2)]
    assert [e.user for e in h.session.history] == ["tell me a story"] and h.session.history[0].interrupted


def test_continue_ms_zero_keeps_the_window_to_before_the_first_audio_and_out_of_range_is_refused() -> None:
    h = talking()
    (error,) = h.send("session_update", continue_ms=5001)
    assert error["code"] == ErrorCode.INVALID_SETTING and h.session.settings.continue_ms == 1200
    h.send("session_update", continue_ms=0)
    first_half(h)
    h.stt.requests[0][1].callback("please call my sister")
    h.llm.last.say("Calling your sister. ", "Dialling")
    h.tts.finish(0)
    assert kinds(speak(h, voiced(600))) == ["speech_started", "stop_play"]
    speak(h, quiet(900))
    h.stt.requests[-1][1].callback("at seven")
    assert [(f["data"]["text"], f["turn"]) for f in h.raw if f["t"] == "user_msg"] == [
        ("please call my sister", 1), ("at seven", 2)]


def test_a_text_turn_is_barged_in_on_as_before() -> None:
    h = talking()
    h.send("text_input", text="tell me a story")
    produced = speak(h, voiced(600))
    assert kinds(produced) == ["speech_started", "stop_play"]


def test_speech_resumed_after_a_tool_call_started_is_a_barge_in() -> None:
    h = talking()
    first_half(h)
    h.stt.requests[0][1].callback("what time is it")
    turn = h.session._request.turn
    assert turn is not None and turn.unheard
    turn._trail = type("Trail", (), {"steps": [(0, {})]})()  # type: ignore[assignment]
    assert not turn.unheard  # a tool acted: the reply cannot be taken back
    assert kinds(speak(h, voiced(600))) == ["speech_started", "stop_play"]


# -- the stages of a voice turn, from the end of speech ------------------------


def test_each_voice_turn_reports_its_stages_from_the_last_voiced_frame() -> None:
    metrics = ServerMetrics()
    h = talking(listener=lambda clock: metrics.opened("/ws", "live", "alice"))
    speak(h, voiced(900) + quiet(300))
    h.clock.advance(0.05)
    h.stt.requests[0][1].callback("lights on")
    while "speech_stopped" not in kinds(speak(h, quiet(20))):
        pass  # up to the endpoint: 600 ms after the last frame the detector called speech
    h.clock.advance(0.1)
    h.llm.last.say("Done.")
    h.llm.last.finish()
    h.clock.advance(0.2)
    h.tts.finish(0)
    listen_on(h)
    (stages,) = [f["data"] for f in h.raw if f["t"] == "metrics" and "voice_to_voice_ms" in f["data"]]
    assert list(stages) == list(VOICE_STAGES)
    # silence_ms, give or take a detector frame and a client frame (the clock moves per client frame).
    # The transcript was ready at the endpoint; then 100 ms to the first token, 200 more to the audio.
    assert 600 <= stages["endpoint_ms"] <= 600 + 30 + 20 and stages["transcript_ms"] == stages["endpoint_ms"]
    assert stages["first_token_ms"] == stages["endpoint_ms"] + 100
    assert stages["first_audio_ms"] == stages["voice_to_voice_ms"] == stages["endpoint_ms"] + 300
    ((_, counts, total),) = metrics.snapshot()["livetx_voice_to_voice_seconds"]
    assert sum(counts) == 1 and abs(total * 1000 - stages["voice_to_voice_ms"]) < 1e-6


def test_text_turns_report_no_voice_stages() -> None:
    h = talking()
    h.send("text_input", text="hello")
    h.llm.last.say("Hi.")
    h.llm.last.finish()
    h.tts.finish(0)
    assert "end" in kinds(h.raw) and not any("voice_to_voice_ms" in f["data"] for f in h.raw if f["t"] == "metrics")


def test_a_voice_turn_without_audio_reports_the_stages_it_reached() -> None:
    h = talking(tts=False)
    speak(h, voiced(600) + quiet(900))
    h.stt.requests[0][1].callback("hello")
    h.llm.last.say("Hi.")
    h.llm.last.finish()
    listen_on(h)
    (stages,) = [f["data"] for f in h.raw if f["t"] == "metrics" and "endpoint_ms" in f["data"]]
    assert set(stages) == {"endpoint_ms", "transcript_ms", "first_token_ms"}


# -- semantic end of turn -------------------------------------------------------


class ManualTurnEnd:
    """An end-of-turn model whose verdicts the test gives."""

    name = "manual-turn-end"

    def __init__(self) -> None:
        self.asked: list[tuple[bytes, Deferred[float]]] = []

    def complete(self, pcm: bytes) -> Deferred[float]:
        d: Deferred[float] = Deferred()
        self.asked.append((pcm, d))
        return d


def semantic(eagerness: str = "medium") -> tuple[Harness, ManualTurnEnd]:
    model = ManualTurnEnd()
    h = talking(turn_end=model)
    (updated,) = h.send("session_update", end_of_turn="semantic", eagerness=eagerness)
    assert updated["data"]["end_of_turn"] == "semantic" and updated["data"]["eagerness"] == eagerness
    return h, model


def test_semantic_end_of_turn_needs_the_model_and_strict_values() -> None:
    h = talking()
    (error,) = h.send("session_update", end_of_turn="semantic", silence_ms=900)
    assert error["code"] == ErrorCode.INVALID_SETTING and "livetx[turn]" in error["data"]
    assert h.session.settings.end_of_turn == "silence" and h.session.settings.silence_ms == 600
    with_model = talking(turn_end=ManualTurnEnd())
    for fields in ({"end_of_turn": "smart"}, {"eagerness": "eager"}, {"eagerness": 2}):
        (error,) = with_model.send("session_update", **fields)
        assert error["code"] == ErrorCode.INVALID_SETTING, fields


def test_a_finished_request_ends_at_the_first_pause() -> None:
    h, model = semantic()
    speak(h, voiced(900) + quiet(400))
    ((pcm, verdict),) = model.asked  # asked once, at the pause (200 ms for medium)
    assert pcm.startswith(voiced(900)[:9600]) and len(pcm) < 32 * (900 + 400)
    assert "speech_stopped" not in kinds(h.raw)
    verdict.callback(0.93)
    assert "speech_stopped" in kinds(h.raw) and h.state == "processing"  # 400 ms, not 2 s, of silence


def test_an_unfinished_request_waits_for_the_longest_silence() -> None:
    h, model = semantic("high")
    speak(h, voiced(900) + quiet(400))
    model.asked[0][1].callback(0.08)  # "... a table for": not done
    speak(h, quiet(500))
    assert "speech_stopped" not in kinds(h.raw) and len(model.asked) == 1  # one question per pause
    produced = speak(h, quiet(300))  # 1 s of silence, high eagerness's longest wait
    assert "speech_stopped" in kinds(produced)


def test_a_verdict_on_speech_that_went_on_counts_for_nothing() -> None:
    h, model = semantic()
    speak(h, voiced(900) + quiet(400))
    speak(h, voiced(300))
    model.asked[0][1].callback(0.99)
    assert h.state == "capturing" and "speech_stopped" not in kinds(h.raw)
    speak(h, quiet(400))
    assert len(model.asked) == 2  # the new pause is asked about
    model.asked[1][1].callback(0.99)
    assert "speech_stopped" in kinds(h.raw)


# -- the reply's own voice through the user's loudspeaker ------------------------


def buzz(ms: int, f0: float, level: float = 4000) -> bytes:
    """A voiced-like buzz (a fundamental and its harmonics): the detector takes it for speech."""
    samples = ms * 16
    return array.array("h", (
        int(level * sum(math.sin(2 * math.pi * f0 * k * i / 16000) / k for k in range(1, 8)))
        for i in range(samples)
    )).tobytes()


def mixed(*layers: tuple[int, bytes, float], noise: int = 60) -> bytes:
    """Layers of (start ms, PCM, gain) summed, over a little noise: what a microphone hears."""
    rng = random.Random(3)
    length = max(start * 16 + len(pcm) // 2 for start, pcm, _ in layers)
    out = [rng.gauss(0, noise) for _ in range(length)]
    for start, pcm, gain in layers:
        for i, sample in enumerate(array.array("h", pcm)):
            out[start * 16 + i] += sample * gain
    return array.array("h", (max(-32768, min(32767, int(v))) for v in out)).tobytes()


ECHO = 10 ** (-10 / 20)  # -10 dB


def replying(h: Harness, reply: bytes) -> None:
    """A reply whose first sentence's audio is ``reply``, sent now; the model writes on."""
    h.send("text_input", text="tell me a story")
    h.llm.last.say("Once upon a time. ", "There was")
    h.tts.requests[0][1].callback(to_wav(reply))


def test_the_echo_of_the_reply_starts_nothing_while_it_may_be_playing() -> None:
    h = talking()
    speak(h, quiet(300))
    reply = buzz(1500, 210)
    replying(h, reply)
    produced = speak(h, mixed((200, reply, ECHO), (0, quiet(2000), 1)))  # 200 ms late, -10 dB, noise
    assert "speech_started" not in kinds(produced) and h.state == "processing"
    h.llm.last.finish()  # the turn ends while the client still plays what it was sent
    second = buzz(1200, 230)
    h.tts.requests[1][1].callback(to_wav(second))
    assert "end" in kinds(h.raw)
    assert "speech_started" not in kinds(speak(h, mixed((200, second, ECHO), (0, quiet(1600), 1))))


def test_without_the_guard_that_echo_would_barge_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(echo, "THRESHOLD", 1.01)  # no correlation is ever enough: the guard lets all through
    h = talking()
    speak(h, quiet(300))
    reply = buzz(1500, 210)
    replying(h, reply)
    produced = speak(h, mixed((200, reply, ECHO), (0, quiet(2000), 1)))
    assert kinds(produced)[:2] == ["speech_started", "stop_play"]


def barges_in_within_300_ms(reply: bytes, person_ms: int, person: bytes) -> None:
    """``person`` starts ``person_ms`` into the stream over ``reply`` and its echo: ``speech_started`` and
    ``stop_play`` come within 300 ms of stream time."""
    h = talking()
    speak(h, quiet(300))
    replying(h, reply)
    stream = mixed((200, reply, ECHO), (person_ms, person, 1), (0, quiet(3000), 1))
    heard_at = None
    for i in range(0, len(stream), FRAME):
        if "speech_started" in kinds(speak(h, stream[i : i + FRAME])):
            heard_at = (i + FRAME) // 32
            break
    assert heard_at is not None and heard_at - person_ms <= 300
    assert h.raw[-1]["t"] == "stop_play"


def test_a_person_talking_over_the_reply_barges_in_within_300_ms() -> None:
    barges_in_within_300_ms(buzz(2500, 210), 700, voiced(800))


def test_a_person_saying_the_replys_own_words_in_its_voice_barges_in_at_their_first_onset() -> None:
    """Their speech correlates with the reply as its echo does, but comes in as loud as it was played:
    louder than an echo can come back (echo.MAX_ECHO_GAIN), so the first onset is theirs, not dropped."""
    reply = buzz(2500, 210)
    barges_in_within_300_ms(reply, 500, reply)  # the reply again, 500 ms late at its own level


def test_a_person_talking_after_the_turn_while_the_reply_still_plays_is_heard() -> None:
    h = talking()
    speak(h, quiet(300))
    reply = buzz(2500, 210)
    replying(h, reply)
    h.llm.last.finish()
    h.tts.requests[1][1].callback(to_wav(quiet(100)))
    assert "end" in kinds(h.raw) and h.state == "idle"
    produced = speak(h, mixed((200, reply, ECHO), (900, voiced(800), 1), (0, quiet(3000), 1)))
    started = [f for f in produced if f["t"] == "speech_started"]
    assert len(started) == 1 and started[0]["data"]["audio_start_ms"] >= 300 + 900 - 90


# -- a device's wake word ------------------------------------------------------


def test_forgetting_speech_drops_the_open_utterance_and_listens_afresh() -> None:
    """``forget_speech`` (a xiaozhi board's ``listen detect``): what was heard is no request; what follows is."""
    h = talking(stt=ManualSTT())
    assert kinds(speak(h, quiet(300) + voiced(900)))[:1] == ["speech_started"]
    h.session.forget_speech()
    assert "speech_stopped" not in kinds(speak(h, quiet(1500))) and h.stt.requests == []
    produced = speak(h, voiced(900) + quiet(1500))
    assert kinds(produced)[0] == "speech_started" and "speech_stopped" in kinds(produced)
    assert len(h.stt.requests) == 1  # only the speech after the wake word is a request
