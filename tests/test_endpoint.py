"""When an utterance ends, on a fake clock: the transcript at the pause ends a finished request
sooner and holds an unfinished one longer (``end_of_turn: transcript``), and its cues come
before the end-of-turn model's verdict (``semantic``)."""

from __future__ import annotations

from typing import Any

import pytest

from livetx.errors import ErrorCode
from livetx.live.endpoint import COMPLETE, EAGERNESS, UNFINISHED, EndOfTurn, cue
from livetx.live.settings import Settings
from livetx.live.streaming_stt import KEEP_AFTER_BYTES

from .doubles import b64
from .test_session import Harness
from .test_talk import quiet, voiced
from .test_turn_taking import ManualTurnEnd, kinds, listen_on, pcm_of, speak, talking


@pytest.mark.parametrize(("text", "said"), [
    ("Turn on the kitchen lights.", COMPLETE),
    ("What is the weather like?", COMPLETE),  # a question ends, whatever its last word
    ("What is it for?", COMPLETE),
    ("Stop!", COMPLETE),
    ("Book a table for", UNFINISHED),
    ("Book a table for.", UNFINISHED),  # the recognizer's full stop does not outweigh the word
    ("Please call my sister and...", UNFINISHED),
    ("Play some music in the\u2026", UNFINISHED),
    ("I was thinking, um", UNFINISHED),
    ("Well,", UNFINISHED),
    ("call my sister after lunch", None),  # no punctuation, an ordinary last word
    ("Turn it on", None),
    ("", None),
    (None, None),
])
def test_the_cues_of_a_transcript(text: str | None, said: str | None) -> None:
    assert cue(text) == said


def test_each_rule_waits_as_the_transcript_and_the_model_say() -> None:
    pause, longest = EAGERNESS["high"]
    silence = EndOfTurn(Settings(silence_ms=700, eagerness="high", end_of_turn="silence"))
    transcript = EndOfTurn(Settings(silence_ms=700, eagerness="high", end_of_turn="transcript"))
    semantic = EndOfTurn(Settings(silence_ms=700, eagerness="high", end_of_turn="semantic"))
    assert silence.wait_ms("Turn on the lights.", False, True) == 700 == silence.detector_silence_ms
    assert transcript.wait_ms("Turn on the lights.", False, False) == pause
    assert transcript.wait_ms("Book a table for", False, True) == longest
    assert transcript.wait_ms("call my sister", False, True) == 700  # no cue: the silence rule
    assert transcript.wait_ms(None, True, False) == longest == transcript.detector_silence_ms  # its decode runs
    assert semantic.wait_ms("Book a table for", False, True) == longest  # the words overrule "done"
    assert semantic.wait_ms("Turn on the lights.", False, False) == pause  # and "not yet"
    assert semantic.wait_ms("call my sister", False, True) == pause  # no cue: the model decides
    assert semantic.wait_ms(None, True, True) == longest  # not before the transcript could overrule it
    assert semantic.wait_ms("call my sister", False, False) == longest == semantic.detector_silence_ms
    # A silence longer than the longest wait still holds for requests without a cue.
    assert EndOfTurn(Settings(silence_ms=3000, end_of_turn="transcript")).detector_silence_ms == 3000
    # Without a transcript at the pause (a recognizer paid per call) the rule is the silence rule.
    assert EndOfTurn(Settings(silence_ms=700), transcribes_at_pauses=False).detector_silence_ms == 700


def by_transcript(eagerness: str = "medium") -> Harness:
    """Talk mode (600 ms of silence), ``end_of_turn: transcript``: the default engines need no extra."""
    h = talking()
    (updated,) = h.send("session_update", end_of_turn="transcript", eagerness=eagerness)
    assert updated["data"]["end_of_turn"] == "transcript" and updated["data"]["eagerness"] == eagerness
    return h


def stopped(h: Harness) -> bool:
    return "speech_stopped" in kinds(h.raw)


def test_the_transcript_rule_is_a_setting_checked_strictly() -> None:
    h = talking()
    for fields in ({"end_of_turn": "words"}, {"end_of_turn": True}, {"eagerness": "fast"}):
        (error,) = h.send("session_update", **fields)
        assert error["code"] == ErrorCode.INVALID_SETTING, fields
    assert h.session.settings.end_of_turn == "silence"
    by_transcript("low")


def test_a_finished_request_ends_as_soon_as_its_transcript_says_so() -> None:
    h = by_transcript()
    speak(h, voiced(900) + quiet(400))
    ((_, early),) = h.stt.requests  # decoded at the pause
    assert not stopped(h)  # 400 ms of silence, and nothing yet says the request is finished
    early.callback(" Turn on the kitchen lights. ")
    assert stopped(h) and h.state == "processing"
    assert h.raw[-1]["t"] == "user_msg" and h.raw[-1]["data"]["text"] == "Turn on the kitchen lights."
    assert len(h.stt.requests) == 1  # the decode at the pause was the transcript


def test_an_unfinished_request_waits_past_the_silence_up_to_the_longest() -> None:
    h = by_transcript("high")
    speak(h, voiced(900) + quiet(400))
    h.stt.requests[0][1].callback("Book a table for")
    speak(h, quiet(500))  # 900 ms of silence: past silence_ms (600)
    assert not stopped(h) and h.state == "capturing"
    produced = speak(h, quiet(250))  # 1150 ms: past high eagerness's longest wait, counting the hangover
    assert "speech_stopped" in kinds(produced)


def test_a_request_without_a_cue_ends_after_silence_ms() -> None:
    h = by_transcript()
    speak(h, voiced(900) + quiet(400))
    h.stt.requests[0][1].callback("call my sister after lunch")
    assert not stopped(h)
    assert "speech_stopped" in kinds(speak(h, quiet(350)))  # 750 ms, as with the silence rule


def test_an_utterance_waits_for_its_running_decode_rather_than_end_without_a_cue() -> None:
    h = by_transcript()
    speak(h, voiced(900) + quiet(1200))
    assert not stopped(h)  # past silence_ms: the reply would wait for this decode anyway
    h.stt.requests[0][1].callback("play some music in the...")
    assert not stopped(h)  # unfinished: on to the longest silence (2 s, after the detector's hangover)
    assert "speech_stopped" in kinds(speak(h, quiet(1000)))


def test_a_failed_decode_leaves_the_silence_rule() -> None:
    h = by_transcript()
    speak(h, voiced(900) + quiet(800))
    h.stt.requests[0][1].errback(RuntimeError("decoder crashed"))
    assert stopped(h) and h.state == "processing"  # 800 ms of silence is past silence_ms
    assert len(h.stt.requests) == 2  # the segment is decoded again, as without the rule


def test_a_transcript_of_speech_that_went_on_counts_for_nothing() -> None:
    h = by_transcript()
    speak(h, voiced(900) + quiet(400))
    speak(h, voiced(300))  # the user goes on
    h.stt.requests[0][1].callback("Turn on the lights.")
    assert not stopped(h) and h.state == "capturing"
    speak(h, quiet(400))
    assert not stopped(h)  # the finished transcript was of the first part only
    h.stt.requests[1][1].callback("Turn on the lights in the kitchen.")
    assert stopped(h)


def test_the_silence_rule_does_not_read_the_transcript() -> None:
    h = talking()
    speak(h, voiced(900) + quiet(400))
    h.stt.requests[0][1].callback("Turn on the kitchen lights.")
    assert not stopped(h)
    assert "speech_stopped" in kinds(speak(h, quiet(350)))


def semantic_with(verdict: float, text: str) -> Harness:
    """``end_of_turn: semantic`` at medium eagerness: the model's ``verdict`` and the transcript ``text``
    of an utterance followed by 400 ms of silence."""
    model = ManualTurnEnd()
    h = talking(turn_end=model)
    h.send("session_update", end_of_turn="semantic")
    speak(h, voiced(900) + quiet(400))
    ((_, judged),) = model.asked
    judged.callback(verdict)
    h.stt.requests[0][1].callback(text)
    return h


def test_semantic_an_unfinished_transcript_overrules_the_models_done() -> None:
    h = semantic_with(0.97, "Book a table for")
    assert not stopped(h)
    speak(h, quiet(1000))
    assert not stopped(h)  # 1.4 s: the longest wait is 2 s
    assert "speech_stopped" in kinds(speak(h, quiet(800)))


def test_semantic_a_finished_transcript_overrules_the_models_not_yet() -> None:
    h = semantic_with(0.05, "Turn on the kitchen lights.")
    assert stopped(h) and h.state == "processing"


def test_semantic_without_a_cue_the_model_decides() -> None:
    assert stopped(semantic_with(0.97, "call my sister after lunch"))
    h: Any = semantic_with(0.05, "call my sister after lunch")
    speak(h, quiet(1000))
    assert not stopped(h)


def test_the_stages_of_audio_sent_in_one_burst_count_from_its_speech_on_the_streams_timeline() -> None:
    """A client that sends its microphone in bursts (here the whole utterance and its silence at
    once) gets the same endpoint wait as one streaming at real time, not the moment the burst came."""
    h = talking()
    h.clock.advance(5)
    h.session.receive({"t": "speaking_part", "data": b64(voiced(900) + quiet(900))})
    assert stopped(h) and not h.stt.requests[0][1].called
    h.clock.advance(0.25)  # the decode at the pause takes 250 ms from here
    h.stt.requests[0][1].callback("Turn on the lights.")
    h.llm.last.say("Done.")
    h.llm.last.finish()
    h.tts.finish(0)
    listen_on(h)
    (stages,) = [f["data"] for f in h.raw if f["t"] == "metrics" and "endpoint_ms" in f["data"]]
    assert 600 <= stages["endpoint_ms"] <= 630  # silence_ms on the stream (a frame is 30 ms), not 0
    # The transcript came 250 ms after the burst, which held 900 ms of audio after the last voiced
    # frame (900 ms of silence less the detector's hangover of up to 150 ms).
    assert 900 - 150 + 250 <= stages["transcript_ms"] <= 900 + 250


def test_a_long_first_half_keeps_its_words_and_only_the_rest_is_decoded() -> None:
    """A passage read in breaths: the part already transcribed, once long enough to stand alone
    (KEEP_AFTER_BYTES), is not decoded again when the reader goes on."""
    h = by_transcript()
    head = voiced(KEEP_AFTER_BYTES // 32) + quiet(400)
    speak(h, head)
    h.stt.requests[0][1].callback("It was the best of times.")  # a finished sentence: the turn starts
    h.llm.last.say("Indeed it was, long ago. ")
    h.tts.finish(0)
    assert kinds(speak(h, voiced(600))) == ["speech_started", "stop_play"]  # the reader goes on
    speak(h, quiet(400))
    wav, rest = h.stt.requests[-1]
    assert len(pcm_of(wav)) < 32 * 1200  # the new breath alone
    rest.callback("It was the worst of times.")
    assert [(f["data"]["text"], f["turn"]) for f in h.raw if f["t"] == "user_msg"] == [
        ("It was the best of times.", 1), ("It was the best of times. It was the worst of times.", 1)]
    assert h.llm.last.messages[-1]["content"] == "It was the best of times. It was the worst of times."


def test_a_short_first_half_is_decoded_again_with_the_rest() -> None:
    h = by_transcript()
    speak(h, voiced(900) + quiet(400))
    h.stt.requests[0][1].callback("Ever tried.")
    h.llm.last.say("Tried what? ")
    h.tts.finish(0)
    speak(h, voiced(600) + quiet(400))
    wav, whole = h.stt.requests[-1]
    assert len(pcm_of(wav)) > 32 * (900 + 600)  # both breaths, decoded together
    whole.callback("Ever tried. Ever failed.")
    assert h.raw[-1 if h.raw[-1]["t"] == "user_msg" else -2]["data"]["text"] == "Ever tried. Ever failed."


def test_an_utterance_dropped_as_too_long_still_ends_after_silence_ms() -> None:
    h = talking(max_segment_seconds=1.0)
    h.send("session_update", end_of_turn="transcript")
    produced = speak(h, voiced(1500))
    assert kinds(produced) == ["speech_started", "error"] and produced[1]["code"] == ErrorCode.AUDIO_TOO_LONG
    assert kinds(speak(h, voiced(500) + quiet(750))) == ["speech_stopped"]  # nothing to read: silence_ms


def test_a_long_utterance_keeps_the_words_of_its_start_and_decodes_only_the_rest_at_later_pauses() -> None:
    h = by_transcript()
    start = voiced(KEEP_AFTER_BYTES // 32)
    speak(h, start + quiet(300))  # a comma's pause: decoded, the reader goes on
    ((wav, first),) = h.stt.requests
    first.callback("It was the best of times,")
    speak(h, voiced(900) + quiet(300))
    wav, rest = h.stt.requests[-1]
    assert len(pcm_of(wav)) < 32 * 1500  # the rest alone: the start's words are kept
    rest.callback("it was the worst of times.")
    whole = "It was the best of times, it was the worst of times."
    speak(h, quiet(100))  # past medium eagerness's 200 ms: a finished sentence ends the turn
    assert [f["data"]["text"] for f in h.raw if f["t"] in ("user_partial", "user_msg")] == [
        "It was the best of times,", whole, whole]
    assert len(h.stt.requests) == 2


def test_a_decode_still_running_when_the_speaker_pauses_again_is_kept_and_the_next_follows_it() -> None:
    """The reader paused, went on and paused again before the first pause's decode was done: that
    decode, long enough to stand alone, is kept rather than thrown away, and the next pause decodes
    only what came after it; the transcript is both, in order, whichever finishes first."""
    h = by_transcript()
    speak(h, voiced(KEEP_AFTER_BYTES // 32) + quiet(300))
    ((_, first),) = h.stt.requests
    speak(h, voiced(900) + quiet(300))  # the first decode has not answered yet
    wav, rest = h.stt.requests[-1]
    assert len(h.stt.requests) == 2 and len(pcm_of(wav)) < 32 * 1500  # the rest alone
    assert not first.called  # not cancelled: its words are kept
    rest.callback("it was the worst of times.")
    assert not [f for f in h.raw if f["t"] in ("user_partial", "user_msg")]  # waits for the kept words
    first.callback("It was the best of times,")
    speak(h, quiet(100))
    whole = "It was the best of times, it was the worst of times."
    assert [f["data"]["text"] for f in h.raw if f["t"] == "user_msg"] == [whole]
    assert len(h.stt.requests) == 2


def test_a_kept_decode_that_fails_leaves_later_pauses_to_decode_from_the_start() -> None:
    h = by_transcript()
    head = voiced(KEEP_AFTER_BYTES // 32) + quiet(300)
    speak(h, head)
    ((_, first),) = h.stt.requests
    speak(h, voiced(900) + quiet(300))
    _, rest = h.stt.requests[-1]
    first.errback(RuntimeError("engine failed"))
    rest.callback("it was the worst of times.")  # its text would follow words that were lost
    assert not [f for f in h.raw if f["t"] == "user_partial"]
    speak(h, voiced(600) + quiet(300))  # the reader goes on: the next pause decodes everything
    wav, whole = h.stt.requests[-1]
    assert len(h.stt.requests) == 3 and len(pcm_of(wav)) > len(head) + 32 * (900 + 600)
    whole.callback("It was the best of times, it was the worst of times, it was the age.")
    speak(h, quiet(100))
    assert [f["data"]["text"] for f in h.raw if f["t"] == "user_msg"] == [
        "It was the best of times, it was the worst of times, it was the age."]


def test_a_short_decode_still_running_at_the_next_pause_is_cancelled() -> None:
    h = by_transcript()
    speak(h, voiced(900) + quiet(300))
    ((_, first),) = h.stt.requests
    speak(h, voiced(600) + quiet(300))
    wav, _ = h.stt.requests[-1]
    assert first.called and len(pcm_of(wav)) > 32 * (900 + 600)  # stale, and decoded again with the rest


def test_an_utterance_dropped_mid_way_cancels_the_decode_its_words_were_kept_from() -> None:
    h = by_transcript()
    speak(h, voiced(KEEP_AFTER_BYTES // 32) + quiet(300))
    speak(h, voiced(900) + quiet(300))
    (_, kept), (_, rest) = h.stt.requests
    h.send("session_update", turn_detection="client")  # detection changes hands: the utterance is dropped
    assert kept.called and rest.called and not [f for f in h.raw if f["t"] == "user_msg"]
