"""Protocol extensions on a fake clock: turn ids, session_update, server turn detection."""

from __future__ import annotations

import array
import math
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from livetx.audio import audio_format, read_wav, to_wav
from livetx.errors import ErrorCode
from livetx.live import frames
from livetx.live.settings import Settings
from livetx.live.vad import VoiceDetector

from .doubles import ManualSTT, b64
from .test_session import Harness

#: The fields of each frame type in the reference protocol.
REFERENCE_FIELDS = {"end": {"t"}, "stop_play": {"t"}, "error": {"t", "data", "code"}}


def turn_of(h: Harness, kind: str) -> list[Any]:
    return [f.get("turn") for f in h.raw if f["t"] == kind]


def test_every_frame_of_a_turn_carries_its_id_and_nothing_else_changes() -> None:
    h = Harness()
    h.send("text_input", text="first")
    h.send("text_input", text="refused while busy")
    h.llm.last.say("One sentence here. ")
    h.tts.finish(0)
    h.llm.last.finish()
    h.send("start_speaking", stamp="v")
    h.send("end_speaking", stamp="v")
    h.stt.requests[0][1].callback("second")
    h.llm.last.say("Talking on and on. ")
    h.send("interrupt")

    busy = [f for f in h.raw if f.get("code") == ErrorCode.PROCESSING_ERROR]
    assert busy == [{"t": "error", "data": "Session is busy", "code": "PROCESSING_ERROR"}]
    turn_frames = [f for f in h.raw if f not in busy]
    ids = [f["turn"] for f in turn_frames]
    assert ids == sorted(ids) and set(ids) == {1, 2}
    assert turn_of(h, "user_msg") == [1, 2] and turn_of(h, "stop_play") == [2]
    assert turn_of(h, "end") == [1]
    for frame in turn_frames:
        assert set(frame) - {"turn"} == REFERENCE_FIELDS.get(frame["t"], {"t", "data"})


def test_session_update_validates_and_reports_every_setting() -> None:
    h = Harness()
    (reply,) = h.send("session_update", turn_detection="server", silence_ms=800)
    assert reply == {"t": "session_updated", "data": {**vars(Settings()), "turn_detection": "server", "silence_ms": 800}}
    assert h.session.settings.server_detection

    for fields, code in [
        ({"turn_detect": "server"}, ErrorCode.UNKNOWN_SETTING),
        ({"turn_detection": "sometimes"}, ErrorCode.INVALID_SETTING),
        ({"silence_ms": 50}, ErrorCode.INVALID_SETTING),
        ({"silence_ms": True}, ErrorCode.INVALID_SETTING),
        ({"vad_aggressiveness": 1.5}, ErrorCode.INVALID_SETTING),
        ({"audio_transport": ["binary"]}, ErrorCode.INVALID_SETTING),
        ({"preroll_ms": 100, "colour": "red"}, ErrorCode.UNKNOWN_SETTING),
    ]:
        (error,) = h.send("session_update", **fields)
        assert (error["t"], error["code"]) == ("error", code), fields
    assert h.session.settings.silence_ms == 800 and h.session.settings.preroll_ms == 300  # nothing half-applied

    (reply,) = h.send("session_update", turn_detection="client")
    assert reply["data"]["turn_detection"] == "client" and reply["data"]["silence_ms"] == 800


def test_a_session_speaks_in_the_voice_it_picked_of_those_the_engine_offers() -> None:
    h = Harness()
    h.send("session_update", silence_ms=600, voice=None)
    assert h.tts.listed == 0  # type: ignore[union-attr]  # asked only when a voice is picked
    (reply,) = h.send("session_update", voice="high")
    assert reply == {"t": "session_updated", "data": {**vars(Settings()), "voice": "high"}}
    h.send("text_input", text="say it")
    h.llm.last.say("In my voice. ")
    h.llm.last.finish()
    assert h.tts.asked == ["high"]  # type: ignore[union-attr]
    h.tts.finish(0)  # type: ignore[union-attr]

    for voice, why in [
        ("medium", "voice 'medium' is not one of the 2 voices of this server (GET /api/v1/voices lists them)"),
        ("high+fast", "voice 'high+fast' has no variant 'fast'; the variants are slow, …"),
        (7, "voice must be a string, or null for the server's voice"),
    ]:
        (error,) = h.send("session_update", voice=voice, silence_ms=900)
        assert error == {"t": "error", "code": ErrorCode.INVALID_SETTING, "data": why}
    assert h.session.settings.voice == "high" and h.session.settings.silence_ms == 600  # nothing half-applied

    (reply,) = h.send("session_update", voice="low+slow")
    assert reply["data"]["voice"] == "low+slow"
    (reply,) = h.send("session_update", voice=None)  # back to the server's own
    assert reply["data"]["voice"] is None
    h.send("text_input", text="again")
    h.llm.last.say("Default now. ")
    assert h.tts.asked == ["high", None]  # type: ignore[union-attr]


def test_a_server_without_speech_refuses_a_voice() -> None:
    h = Harness(tts=False)
    (error,) = h.send("session_update", voice="low")
    assert (error["code"], error["data"]) == (
        ErrorCode.INVALID_SETTING, "voice: this server speaks no audio ([tts] provider none)")


# -- the voice detector ------------------------------------------------------

FRAME = 640  # 20 ms of 16 kHz PCM16, the size clients usually send


def voiced(ms: int) -> bytes:
    """A buzzing vowel-like tone (150 Hz and harmonics): speech to the detector."""
    samples = ms * 16
    return array.array("h", (
        int(4000 * sum(math.sin(2 * math.pi * 150 * k * i / 16000) / k for k in range(1, 8)))
        for i in range(samples)
    )).tobytes()


def quiet(ms: int) -> bytes:
    return bytes(ms * 32)


class Heard:
    """Records what a detector reports."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.audio = bytearray()

    def speech_started(self, pcm: bytes, start_ms: int) -> None:
        self.events.append(("started", start_ms))
        self.audio = bytearray(pcm)

    def speech_audio(self, pcm: bytes) -> None:
        self.audio += pcm

    def speech_stopped(self, end_ms: int) -> None:
        self.events.append(("stopped", end_ms))


def exact(frame: bytes) -> bool:
    """A classifier without the real detector's hangover: any sound is speech."""
    return any(frame)


def detector(real: bool = False, **tunables: Any) -> tuple[VoiceDetector, Heard, Clock]:
    """A detector on a fake clock, with the exact classifier unless ``real``."""
    clock, heard = Clock(), Heard()
    classifier = None if real else (exact, 960)
    return VoiceDetector(replace(Settings(), **tunables), clock, heard, classifier), heard, clock


def stream_in(d: VoiceDetector, pcm: bytes) -> None:
    for i in range(0, len(pcm), FRAME):
        d.feed(pcm[i : i + FRAME])


def test_detector_finds_an_utterance_with_its_preroll() -> None:
    d, heard, _ = detector(min_speech_ms=90, silence_ms=300, preroll_ms=120)
    stream_in(d, quiet(990) + voiced(600))
    assert heard.events == [("started", 990)]
    stream_in(d, quiet(270))
    assert d.state == "speech"  # 270 ms of silence is a pause, not the end
    stream_in(d, voiced(300) + quiet(330))
    assert heard.events == [("started", 990), ("stopped", 990 + 600 + 270 + 300 + 300)]
    # The utterance: 120 ms of pre-roll, then everything up to the end of the silence.
    assert bytes(heard.audio) == quiet(120) + voiced(600) + quiet(270) + voiced(300) + quiet(300)


def test_detector_drops_noise_shorter_than_the_minimum() -> None:
    d, heard, _ = detector(min_speech_ms=240, silence_ms=300)
    for _ in range(5):
        stream_in(d, quiet(300) + voiced(90))  # clicks well apart
    stream_in(d, quiet(600))
    assert heard.events == [] and d.state == "quiet"
    stream_in(d, voiced(90) + quiet(60) + voiced(180))  # short gaps do not reset an onset
    assert heard.events == [("started", 5 * 390 + 600)]


def test_detector_ends_an_utterance_when_the_stream_stalls() -> None:
    d, heard, clock = detector(min_speech_ms=60, silence_ms=500)
    stream_in(d, voiced(300))
    clock.advance(0.4)
    stream_in(d, voiced(60))  # still coming: the stall timer starts again
    clock.advance(0.4)
    assert heard.events == [("started", 0)]
    clock.advance(0.1)
    assert heard.events == [("started", 0), ("stopped", 360)]
    assert clock.getDelayedCalls() == []


def test_detector_memory_stays_bounded_on_an_endless_stream() -> None:
    d, heard, _ = detector(min_speech_ms=300, silence_ms=600, preroll_ms=300)
    for _ in range(200):  # 60 s of clicks every 300 ms: never enough speech, never quiet long
        stream_in(d, voiced(30) + quiet(270) + b"\x00" * 10)
        assert len(d._preroll) <= 10 and len(d._onset) <= (300 + 600) // 30 and len(d._pending) < 960
    assert heard.events == []  # scattered clicks never add up to speech
    stream_in(d, quiet(2000))
    assert len(d._preroll) == 10 and d._onset == []


def test_pocketsphinx_vad_hears_the_tone_and_not_the_silence() -> None:
    d, heard, _ = detector(real=True, vad="webrtc", min_speech_ms=200, silence_ms=300, preroll_ms=0)
    stream_in(d, quiet(600) + voiced(60) + quiet(600))  # a short buzz: noise
    assert heard.events == []
    stream_in(d, voiced(900) + quiet(600))
    (started, at), (stopped, end) = heard.events
    assert at == 1260 and 1260 + 900 + 300 <= end <= 1260 + 900 + 300 + 150  # the detector's hangover


# -- talk mode in the session --------------------------------------------------


def talking(**options: Any) -> Harness:
    """Talk mode on WebRTC's detector, which takes these tests' tones for speech (Silero would not)."""
    h = Harness(**options)
    h.send("session_update", turn_detection="server", vad="webrtc", min_speech_ms=210, silence_ms=300, preroll_ms=90)
    return h


def speak(h: Harness, pcm: bytes) -> list[dict[str, Any]]:
    before = len(h.out)
    for i in range(0, len(pcm), FRAME):
        h.send("speaking_part", data=b64(pcm[i : i + FRAME]))
    return h.raw[before:]


def test_talk_mode_turns_detected_speech_into_a_voice_turn() -> None:
    h = talking()
    assert speak(h, quiet(600)) == []
    started = speak(h, voiced(600))
    assert started == [{"t": "speech_started", "data": {"audio_start_ms": 600}}]
    assert h.state == "capturing"
    produced = speak(h, quiet(600))
    assert [f["t"] for f in produced] == ["speech_stopped", "metrics", "metrics"]
    assert 600 + 600 + 300 <= produced[0]["data"]["audio_end_ms"] <= 600 + 600 + 300 + 150
    wav, pending = h.stt.requests[0]
    pcm, _ = read_wav(wav)
    assert pcm.startswith(quiet(90) + voiced(600)[:9600]) and len(pcm) < 32 * (90 + 600 + 450)
    pending.callback("lights on")
    assert h.raw[-1] == {"t": "user_msg", "data": {"text": "lights on", "ts": 0}, "turn": 1}
    assert h.state == "processing"


def test_talk_mode_drops_noise_and_refuses_client_framing() -> None:
    h = talking()
    assert speak(h, voiced(60) + quiet(600)) == []
    assert h.stt.requests == [] and h.state == "idle"
    for kind, fields in (("start_speaking", {"stamp": "s"}), ("end_speaking", {"stamp": "s"})):
        (error,) = h.send(kind, **fields)
        assert error["code"] == ErrorCode.INVALID_STATE and "turn_detection is server" in error["data"]
    speak(h, voiced(300))
    assert h.state == "capturing"
    h.send("session_update", turn_detection="client")  # mid-utterance: it is dropped
    assert h.state == "idle" and speak(h, voiced(600) + quiet(600))[0]["code"] == ErrorCode.INVALID_STATE
    h.send("start_speaking", stamp="s")
    assert h.state == "capturing"


def test_speech_during_a_reply_interrupts_it_like_interrupt() -> None:
    h = talking()
    h.send("text_input", text="tell me a story")
    h.llm.last.say("Once upon a time. ", "There was")
    h.tts.finish(0)
    produced = speak(h, voiced(300))
    assert [f["t"] for f in produced] == ["speech_started", "stop_play"]
    assert produced[1]["turn"] == 1
    assert h.llm.last.cancelled and h.state == "capturing"
    assert h.session.history[-1].reply == "Once upon a time. There was" and h.session.history[-1].interrupted
    produced = speak(h, quiet(600))
    assert [f["t"] for f in produced] == ["speech_stopped", "metrics", "metrics"]
    assert {f.get("turn") for f in produced[1:]} == {2}


def test_talk_mode_caps_an_endless_utterance() -> None:
    h = talking(max_segment_seconds=1.0)
    produced = speak(h, voiced(1500))
    assert [f["t"] for f in produced] == ["speech_started", "error"]
    assert produced[1]["code"] == ErrorCode.AUDIO_TOO_LONG and h.state == "idle"
    produced = speak(h, voiced(1000) + quiet(600))
    assert [f["t"] for f in produced] == ["speech_stopped"] and h.stt.requests == []
    speak(h, voiced(300) + quiet(600))
    assert len(h.stt.requests) == 1  # the next utterance is a turn again


class PartialSTT(ManualSTT):
    """A recognizer that can also transcribe an unfinished utterance, when the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.partials: list[tuple[bytes, Deferred[str]]] = []

    def partial(self, pcm: bytes) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.partials.append((pcm, d))
        return d


def test_partial_transcripts_while_the_user_speaks() -> None:
    h = talking(stt=PartialSTT())
    speak(h, voiced(400))
    assert h.stt.partials == []  # less than half a second of utterance so far
    speak(h, voiced(300))
    assert isinstance(h.stt, PartialSTT)
    (pcm, pending), = h.stt.partials
    assert len(pcm) >= 16_000 and pcm == (voiced(400) + voiced(300))[: len(pcm)]
    speak(h, voiced(900))
    assert len(h.stt.partials) == 1  # one at a time, however much audio arrives
    pending.callback(" turn on ")
    assert h.raw[-1] == {"t": "user_partial", "data": {"text": "turn on"}}
    assert len(h.stt.partials) == 2  # the audio that piled up meanwhile
    h.stt.partials[1][1].callback("turn on")  # unchanged: not sent again
    assert [f["t"] for f in h.raw].count("user_partial") == 1
    speak(h, voiced(600))
    late = h.stt.partials[2][1]
    produced = speak(h, quiet(600))
    assert late.called and [f["t"] for f in produced] == ["speech_stopped", "metrics", "metrics"]


class RaisingPartialSTT(PartialSTT):
    def partial(self, pcm: bytes) -> Deferred[str]:
        raise RuntimeError("no decoder for partials")


def test_a_partial_that_raises_is_only_logged_and_the_utterance_goes_on() -> None:
    h = talking(stt=RaisingPartialSTT())
    produced = speak(h, voiced(2000) + quiet(600))
    assert [f["t"] for f in produced] == ["speech_started", "speech_stopped", "metrics", "metrics"]
    assert h.state == "processing" and len(h.stt.requests) == 1


def test_recognizers_without_partials_send_none() -> None:
    h = talking()
    frames_sent = speak(h, voiced(2000) + quiet(600))
    assert "user_partial" not in [f["t"] for f in frames_sent] and len(h.stt.requests) == 1


# -- truncation --------------------------------------------------------------


def spoken_turn(h: Harness, durations_ms: list[int], interrupt_after: int | None = None) -> None:
    """A text turn whose sentences come back from TTS as WAVs of the given lengths."""
    h.send("text_input", text="tell me three things")
    h.llm.last.say("The first thing is this. ", "The second thing is that. ", "The third is the last.")
    h.llm.last.finish()
    for i, ms in enumerate(durations_ms):
        if i == interrupt_after:
            h.send("interrupt")
            return
        h.tts.requests[i][1].callback(to_wav(quiet(ms)))


def test_truncate_keeps_the_sentences_the_user_heard() -> None:
    h = Harness()
    spoken_turn(h, [1000, 800, 600])
    assert h.session.history[-1].reply == "The first thing is this. The second thing is that. The third is the last."
    (reply,) = h.send("truncate", turn=1, audio_end_ms=1900)
    heard = "The first thing is this. The second thing is that."
    assert reply == {"t": "truncated", "data": {"audio_end_ms": 1900, "text": heard}}
    assert h.raw[-1]["turn"] == 1
    assert h.session.history[-1].reply == heard and h.session.history[-1].interrupted
    h.send("text_input", text="and then?")
    assert h.llm.last.messages[-2:] == [
        {"role": "assistant", "content": heard},
        {"role": "user", "content": "and then?"},
    ]


def test_truncate_after_barge_in_and_its_refusals() -> None:
    h = Harness()
    spoken_turn(h, [1000, 800, 600], interrupt_after=1)
    assert h.send("truncate", turn=1, audio_end_ms=999)[0]["data"]["text"] == ""
    assert h.session.history[-1].reply == ""
    assert h.send("truncate", turn=1, audio_end_ms=1000)[0]["data"]["text"] == "The first thing is this."
    for fields, code in [
        ({"turn": 2, "audio_end_ms": 10}, ErrorCode.UNKNOWN_TURN),
        ({"turn": "1", "audio_end_ms": 10}, ErrorCode.INVALID_MESSAGE_FORMAT),
        ({"turn": 1, "audio_end_ms": -1}, ErrorCode.INVALID_MESSAGE_FORMAT),
        ({"turn": 1}, ErrorCode.INVALID_MESSAGE_FORMAT),
    ]:
        assert h.send("truncate", **fields)[0]["code"] == code, fields
    silent = Harness(tts=False)
    silent.send("text_input", text="hi")
    silent.llm.last.say("Hello there.")
    silent.llm.last.finish()
    assert silent.send("truncate", turn=1, audio_end_ms=0)[0]["code"] == ErrorCode.UNKNOWN_TURN


def test_truncate_refuses_audio_of_unknown_length_and_keeps_the_reply() -> None:
    h = Harness()
    h.send("text_input", text="tell me two things")
    h.llm.last.say("The first thing is this. ", "The second is mp3.")
    h.llm.last.finish()
    h.tts.requests[0][1].callback(to_wav(quiet(1000)))
    h.tts.requests[1][1].callback(b"ID3\x04 an mp3 file")  # [tts] response_format = "mp3"
    whole = h.session.history[-1]
    (error,) = h.send("truncate", turn=1, audio_end_ms=5000)
    assert (error["t"], error["code"]) == ("error", ErrorCode.UNKNOWN_TURN) and "unknown length" in error["data"]
    assert h.session.history[-1] == whole and not whole.interrupted


def test_binary_response_headers_name_the_audio_format() -> None:
    samples = [
        (to_wav(quiet(20)), "wav"), (b"ID3\x04rest", "mp3"), (b"\xff\xfb\x90", "mp3"),
        (b"OggS\x00", "opus"), (b"fLaC\x00", "flac"), (b"\xff\xf1\x50", "aac"),
    ]
    assert [audio_format(audio) for audio, _ in samples] == [name for _, name in samples]


def test_a_microphone_that_goes_quiet_mid_utterance_still_ends_the_turn() -> None:
    h = talking()
    speak(h, voiced(600))
    h.clock.advance(0.29)
    assert h.state == "capturing"
    h.clock.advance(0.02)  # silence_ms of nothing at all
    assert [f["t"] for f in h.raw[-3:]] == ["speech_stopped", "metrics", "metrics"]
    assert h.state == "processing" and len(h.stt.requests) == 1
    h.session.close()
    assert h.clock.getDelayedCalls() == []


def test_a_stopping_server_drops_the_utterance_half_heard_and_hears_no_more() -> None:
    h = talking()
    speak(h, voiced(300))
    assert h.state == "capturing"
    h.session.stop_listening()
    assert h.state == "idle" and h.clock.getDelayedCalls() == []  # no stall timer left to end it
    assert speak(h, voiced(600) + quiet(600)) == [] and h.state == "idle"
    assert h.stt.requests == []  # no turn started from speech already heard
