"""A phone call's logic on a fake clock: carrier frames in, session frames out, marks and cuts."""

from __future__ import annotations

import base64
import math
import tomllib
from typing import Any

import pytest
from twisted.internet.task import Clock

from livetx.audio import resample, to_wav
from livetx.config import ConfigError, from_mapping
from livetx.domain import Engines
from livetx.errors import ErrorCode
from livetx.live.session import LiveSession
from livetx.telephony import Carrier, CarrierError, Dtmf, Ignored, Mark, Media, Start
from livetx.telephony.call import GOODBYE, Pacer, PhoneCall
from livetx.metrics import ServerMetrics
from livetx.telephony.codec import L16, MULAW, AudioFormat, Inbound, decode_g711, encode_g711
from livetx.telephony.routes import telephony_routes
from livetx.telephony.plivo import CARRIER as PLIVO
from livetx.telephony.telnyx import CARRIER as TELNYX
from livetx.telephony.twilio import CARRIER as TWILIO
from livetx.telephony.twilio import signature_valid, twilio_signature
from livetx.telephony.vonage import CARRIER as VONAGE
from livetx.telephony.webhook import caller_username
from livetx.tools import Tool
from livetx.web.connections import ConnectionTracker

from .doubles import ManualTTS, ScriptedLLM

SID = "MZ1"
ONE, TWO = "The first one. ", "The second one. "
#: Each sentence's speech: this many ms of 16 kHz audio.
SENTENCE_MS = 400


class SpeechTTS(ManualTTS):
    """Finishes with a real WAV (``SENTENCE_MS`` of quiet audio), so durations are known."""

    def finish(self, index: int) -> bytes:
        text, d = self.requests[index]
        audio = to_wav(b"\x10\x00" * (16 * SENTENCE_MS))
        d.callback(audio)
        return audio


class Host:
    """The socket's side of a call, recorded."""

    def __init__(self, clock: Clock, carrier: Carrier = TWILIO) -> None:
        self.clock = clock
        self.llm = ScriptedLLM()
        self.tts = SpeechTTS()
        self.sent: list[dict[str, Any]] = []
        #: Binary messages sent (Vonage's audio).
        self.audio: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.refusals: list[ErrorCode] = []
        self.errors: list[dict[str, Any]] = []
        self.session: LiveSession | None = None
        self.end_call: Tool | None = None
        self.call = PhoneCall(carrier=carrier, host=self, clock=clock, dtmf_wait=0.5)

    def send_frame(self, frame: dict[str, Any] | bytes) -> None:
        if isinstance(frame, bytes):
            self.audio.append(frame)
        else:
            self.sent.append(frame)

    def hang_up(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def open_session(self, start: Start, end_call: Tool) -> LiveSession | None:
        self.end_call = end_call
        self.session = LiveSession(username="+15550001", engines=Engines(llm=self.llm, tts=self.tts, stt=None),
                                   clock=self.clock, emit=self.call.from_session)
        return self.session

    def refused(self, code: ErrorCode, message: str) -> None:
        self.refusals.append(code)

    def session_error(self, frame: dict[str, Any]) -> None:
        self.errors.append(frame)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.sent if f["event"] == kind]


def started(seq: int = 1) -> tuple[Host, PhoneCall]:
    host = Host(Clock())
    call = host.call
    call.receive({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    call.receive({"event": "start", "sequenceNumber": str(seq), "streamSid": SID, "start": {
        "streamSid": SID, "callSid": "CA1", "accountSid": "AC1", "tracks": ["inbound"], "customParameters": {},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
    return host, call


def press(call: PhoneCall, digit: str, seq: int) -> None:
    call.receive({"event": "dtmf", "sequenceNumber": str(seq), "streamSid": SID,
                  "dtmf": {"track": "inbound_track", "digit": digit}})


def echo(call: PhoneCall, name: str, seq: int) -> None:
    call.receive({"event": "mark", "sequenceNumber": str(seq), "streamSid": SID, "mark": {"name": name}})


def reply(host: Host, *sentences: str) -> None:
    """The model says ``sentences``; each is spoken."""
    host.llm.last.say(*sentences)
    for i in range(len(host.tts.requests)):
        if not host.tts.requests[i][1].called:
            host.tts.finish(i)


def answered(*sentences: str, digit: str = "1") -> tuple[Host, PhoneCall]:
    """A call whose caller pressed ``digit`` (sequence number 2) and is being told ``sentences``."""
    host, call = started()
    press(call, digit, 2)
    host.clock.advance(0.5)
    reply(host, *sentences)
    return host, call


def test_each_sentence_goes_out_as_mulaw_then_a_mark() -> None:
    host, call = started()
    press(call, "5", 2)
    host.clock.advance(0.5)
    assert host.llm.last.messages[-1]["content"] == "(The caller pressed 5 on the phone's keypad.)"
    reply(host, ONE, TWO)
    kinds = [f["event"] for f in host.sent]
    assert kinds == ["media", "mark", "media", "mark"]
    marks = [f["mark"]["name"] for f in host.events("mark")]
    assert marks == ["livetx-1-0", "livetx-1-1"] and all(f["streamSid"] == SID for f in host.sent)
    audio = base64.b64decode(host.events("media")[0]["media"]["payload"])
    assert len(audio) == 8 * SENTENCE_MS  # 8 kHz, one byte a sample
    pcm = decode_g711(audio, MULAW)
    assert max(abs(int.from_bytes(pcm[i:i + 2], "little", signed=True)) for i in range(0, len(pcm), 2)) < 64


def test_barge_in_clears_and_keeps_only_what_the_marks_say_was_heard() -> None:
    host, call = answered(ONE, TWO, "The third one. ")
    echo(call, "livetx-1-0", 3)
    press(call, "2", 4)  # the caller speaks (presses) over sentence two
    assert host.sent[-1] == {"event": "clear", "streamSid": SID}
    echo(call, "livetx-1-1", 5)  # Twilio returns the cleared marks: not heard
    echo(call, "livetx-1-2", 6)
    assert host.session is not None
    assert host.session.history[-1].reply == ONE.strip() and host.session.history[-1].interrupted
    host.clock.advance(0.5)
    assert "pressed 2" in host.llm.last.messages[-1]["content"]
    assert [m["content"] for m in host.llm.last.messages if m["role"] == "assistant"] == [ONE.strip()]


def test_speech_over_a_finished_reply_still_playing_clears_and_cuts_it() -> None:
    host, call = answered(ONE, TWO)
    host.llm.last.finish()
    assert host.session is not None and host.session.state == "idle"
    echo(call, "livetx-1-0", 3)
    call.from_session({"t": "speech_started", "data": {"audio_start_ms": 0}})  # what the detector says
    assert host.sent[-1]["event"] == "clear"
    assert host.session.history[-1].reply == ONE.strip()


def test_end_call_hangs_up_once_the_goodbye_has_played() -> None:
    host, call = started()
    press(call, "9", 2)
    host.clock.advance(0.5)
    assert host.end_call is not None
    host.end_call.call()  # the model calls end_call
    reply(host, "Goodbye, caller. ")
    host.llm.last.finish()
    assert [f["mark"]["name"] for f in host.events("mark")] == ["livetx-1-0", GOODBYE]
    assert host.closed is None  # not before the goodbye has played
    echo(call, "livetx-1-0", 3)
    echo(call, GOODBYE, 4)
    assert host.closed == (1000, "Call ended")


def test_end_call_hangs_up_even_if_the_last_mark_never_comes_back() -> None:
    host, call = started()
    press(call, "9", 2)
    host.clock.advance(0.5)
    assert host.end_call is not None
    host.end_call.call()
    reply(host, "Goodbye, caller. ")
    host.llm.last.finish()
    host.clock.advance(SENTENCE_MS / 1000 + 2.9)
    assert host.closed is None
    host.clock.advance(0.2)
    assert host.closed == (1000, "Call ended")


def test_a_caller_who_hangs_up_mid_reply_leaves_what_was_heard() -> None:
    host, call = answered(ONE, TWO)
    echo(call, "livetx-1-0", 3)
    call.receive({"event": "stop", "sequenceNumber": "4", "streamSid": SID, "stop": {"callSid": "CA1"}})
    assert call.finished.called and host.session is not None
    assert host.session.history[-1].reply == ONE.strip()
    assert not host.events("clear")  # the line is gone: nothing more is sent


def test_a_caller_who_hangs_up_while_a_finished_reply_plays_leaves_what_was_heard() -> None:
    host, call = answered(ONE, TWO)
    host.llm.last.finish()
    echo(call, "livetx-1-0", 3)
    assert host.session is not None and host.session.state == "idle"
    call.hung_up()  # the socket dropped
    assert host.session.history[-1].reply == ONE.strip()


@pytest.mark.parametrize("frame, code", [
    ({"event": "media", "sequenceNumber": "2", "streamSid": "MZ-other", "media": {"payload": "/w=="}},
     ErrorCode.INVALID_MESSAGE_FORMAT),
    ({"event": "media", "sequenceNumber": "2", "streamSid": SID, "media": {"payload": "not base64!"}},
     ErrorCode.INVALID_AUDIO),
    ({"event": "media", "sequenceNumber": "1", "streamSid": SID, "media": {"payload": "/w=="}},
     ErrorCode.INVALID_STATE),  # numbered before the start it follows
    ({"event": "dance", "sequenceNumber": "2", "streamSid": SID}, ErrorCode.UNKNOWN_MESSAGE_TYPE),
    ({"event": "mark", "sequenceNumber": "2", "streamSid": SID}, ErrorCode.INVALID_MESSAGE_FORMAT),
    ({"event": "start", "sequenceNumber": "2", "streamSid": SID, "start": {}}, ErrorCode.INVALID_MESSAGE_FORMAT),
])
def test_bad_frames_are_refused_and_the_call_goes_on(frame: dict[str, Any], code: ErrorCode) -> None:
    host, call = started()
    call.receive(frame)
    assert host.refusals == [code] and host.closed is None
    press(call, "1", 3)
    host.clock.advance(0.5)
    assert "pressed 1" in host.llm.last.messages[-1]["content"]


def test_frames_before_start_are_refused_and_a_format_we_cannot_take_ends_the_call() -> None:
    host = Host(Clock())
    host.call.receive({"event": "media", "sequenceNumber": "1", "streamSid": SID, "media": {"payload": "/w=="}})
    assert host.refusals == [ErrorCode.INVALID_STATE] and host.session is None
    host.call.receive({"event": "start", "sequenceNumber": "2", "streamSid": SID, "start": {
        "streamSid": SID, "callSid": "CA1", "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000}}})
    assert host.refusals[-1] == ErrorCode.INVALID_AUDIO and host.closed is not None and host.closed[0] == 1003


def test_dtmf_can_be_ignored() -> None:
    host = Host(Clock())
    host.call = PhoneCall(carrier=TWILIO, host=host, clock=host.clock, dtmf="ignore")
    host.call.receive({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {
        "streamSid": SID, "callSid": "CA1", "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}})
    press(host.call, "1", 2)
    host.clock.advance(5)
    assert host.llm.calls == [] and host.refusals == []


def test_telnyx_and_plivo_frames_read_as_the_same_events() -> None:
    telnyx = TELNYX.parse({"event": "start", "sequence_number": "1", "stream_id": "s1", "start": {
        "call_control_id": "c1", "media_format": {"encoding": "PCMA", "sample_rate": 8000, "channels": 1}}})
    plivo = PLIVO.parse({"event": "start", "sequenceNumber": 1, "start": {
        "callId": "c1", "streamId": "s1", "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000}}})
    assert isinstance(telnyx, Start) and telnyx.audio == AudioFormat("alaw", 8000)
    assert isinstance(plivo, Start) and plivo.audio == AudioFormat("l16", 16000)
    rtp = TELNYX.parse({"event": "start", "sequence_number": "1", "stream_id": "s1", "start": {
        "call_control_id": "c1", "media_format": {"encoding": "L16", "sample_rate": 16000, "channels": 1}}})
    assert isinstance(rtp, Start) and rtp.audio.big_endian
    assert rtp.audio.to_pcm(b"\x01\x02") == b"\x02\x01" and rtp.audio.to_wire(b"\x02\x01", 16000) == b"\x01\x02"
    assert PLIVO.mark("s1", "n") == {"event": "checkpoint", "streamId": "s1", "name": "n"}
    assert PLIVO.clear("s1") == {"event": "clearAudio", "streamId": "s1"}
    assert TELNYX.clear("s1") == {"event": "clear"}


def test_vonage_frames_read_as_the_same_events() -> None:
    connected = {"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "call": "uuid-1",
                 "caller": "+15550001", "token": "t"}
    start = VONAGE.parse(connected)
    assert start == Start("uuid-1", "uuid-1", AudioFormat(L16, 16000), {"call": "uuid-1", "caller": "+15550001",
                                                                       "token": "t"})
    assert VONAGE.parse({"event": "websocket:dtmf", "digit": "5", "duration": 260}) == Dtmf(None, "5")
    assert VONAGE.parse({"event": "websocket:notify", "payload": {"name": "livetx-1-0"}}) == Mark(None, "livetx-1-0")
    assert VONAGE.parse({"event": "websocket:cleared"}) == Ignored()
    assert VONAGE.binary(b"\x01\x00" * 320) == Media(None, b"\x01\x00" * 320)
    assert VONAGE.mark("uuid-1", "n") == {"action": "notify", "payload": {"name": "n"}}
    assert VONAGE.clear("uuid-1") == {"action": "clear"}
    # The last piece of a reply is padded to a whole 20 ms message.
    assert VONAGE.media("uuid-1", b"\x01\x00" * 100, AudioFormat(L16, 16000)) == b"\x01\x00" * 100 + b"\x00" * 440
    for bad, code in (({**connected, "content-type": "audio/l16;rate=44100"}, ErrorCode.INVALID_AUDIO),
                      ({"event": "websocket:connected", "content-type": "audio/l16;rate=8000"},
                       ErrorCode.INVALID_MESSAGE_FORMAT),  # no call header: not a stream the webhook answered
                      ({"event": "media"}, ErrorCode.UNKNOWN_MESSAGE_TYPE)):
        with pytest.raises(CarrierError) as refused:
            VONAGE.parse(bad)
        assert refused.value.code == code


def test_a_vonage_call_speaks_whole_binary_packets_and_clears_on_barge_in() -> None:
    host = Host(Clock(), VONAGE)
    call = host.call
    call.receive(b"\x00\x00" * 320)  # audio before websocket:connected
    assert host.refusals == [ErrorCode.INVALID_STATE]
    call.receive({"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "call": "uuid-1"})
    call.receive({"event": "websocket:dtmf", "digit": "1", "duration": 260})
    host.clock.advance(0.5)
    reply(host, ONE, TWO)
    # Each sentence: its audio in 640-byte (20 ms) binary messages, then a notify naming it.
    assert {len(packet) for packet in host.audio} == {640}
    assert len(host.audio) == 2 * math.ceil(SENTENCE_MS / 20)
    assert host.sent == [{"action": "notify", "payload": {"name": "livetx-1-0"}},
                         {"action": "notify", "payload": {"name": "livetx-1-1"}}]
    call.receive({"event": "websocket:notify", "payload": {"name": "livetx-1-0"}})
    call.receive({"event": "websocket:dtmf", "digit": "2", "duration": 260})  # over sentence two
    assert host.sent[-1] == {"action": "clear"}
    call.receive({"event": "websocket:cleared"})
    assert host.session is not None and host.session.history[-1].reply == ONE.strip()
    assert host.refusals == [ErrorCode.INVALID_STATE]  # nothing else was refused
    call.receive(b"\x00")  # half a sample
    assert host.refusals[-1] == ErrorCode.INVALID_AUDIO


def test_json_carriers_refuse_binary_messages() -> None:
    host, call = started()
    call.receive(b"\x00\x01")
    assert host.refusals == [ErrorCode.UNSUPPORTED_FRAME] and host.closed is None


def test_g711_matches_the_standard_library_codec_where_it_still_exists() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # gone in Python 3.13
    every_code = bytes(range(256))
    every_sample = b"".join(i.to_bytes(2, "little", signed=True) for i in range(-32768, 32768))
    assert decode_g711(every_code, "mulaw") == audioop.ulaw2lin(every_code, 2)
    assert decode_g711(every_code, "alaw") == audioop.alaw2lin(every_code, 2)
    assert encode_g711(every_sample, "mulaw") == audioop.lin2ulaw(every_sample, 2)
    assert encode_g711(every_sample, "alaw") == audioop.lin2alaw(every_sample, 2)


def test_inbound_packets_resample_as_one_stream() -> None:
    tone = b"".join(int(8000 * math.sin(2 * math.pi * 440 * i / 8000)).to_bytes(2, "little", signed=True)
                    for i in range(8000))
    inbound = Inbound(AudioFormat(L16, 8000))
    pcm = b"".join(inbound.feed(tone[i:i + 320]) for i in range(0, len(tone), 320))
    whole = resample(tone, 8000, 16000)
    assert abs(len(pcm) - len(whole)) <= 32 * 30  # the stream holds back under 30 ms, no more
    # No click at each 20 ms packet edge: the stream's samples follow the one-shot resampling closely.
    samples = [int.from_bytes(pcm[i:i + 2], "little", signed=True) for i in range(0, len(pcm), 2)]
    jumps = max(abs(a - b) for a, b in zip(samples[1000:], samples[1001:]))
    assert jumps < 2500  # a 440 Hz sine at 16 kHz moves at most ~1400 a sample at this level


@pytest.mark.parametrize("table, error", [
    ('carriers = ["twilio"]', "twilio_auth_token"),
    ('carriers = ["skype"]', "carriers must be"),
    ('telnyx_public_key = "bm90IGEga2V5"', "telnyx_public_key must be the Base64 Ed25519"),
    ('dtmf = "beep"', "dtmf must be"),
    ('public_url = "voice.example.com"', "public_url"),
    ("usernames = { '+1555' = 7 }", "usernames must be"),
    ("bogus = 1", "unknown key"),
    ('carriers = ["telnyx"]\n[tts]\nprovider = "openai"\nresponse_format = "mp3"', "WAV speech"),
])
def test_telephony_config_is_checked_strictly(table: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        from_mapping(tomllib.loads(f"[telephony]\n{table}\n"), environ={})


def test_twilio_auth_token_comes_from_the_environment_and_turn_settings_are_checked() -> None:
    environ = {"LIVETX_TWILIO_AUTH_TOKEN": "t0k", "LIVETX_PLIVO_AUTH_TOKEN": "p1v",
               "LIVETX_VONAGE_SIGNATURE_SECRET": "v0n"}
    config = from_mapping({"telephony": {"carriers": ["twilio", "plivo", "vonage"]}}, environ=environ)
    section = config.telephony
    assert section.twilio_auth_token == "t0k" and "t0k" not in repr(config)
    assert (section.secret("plivo"), section.secret("vonage"), section.secret("telnyx")) == ("p1v", "v0n", None)
    assert "p1v" not in repr(config) and "v0n" not in repr(config)
    bad = from_mapping({"telephony": {"turn": {"silence_ms": 5}}}, environ={})
    with pytest.raises(ConfigError, match=r"\[telephony.turn\] silence_ms"):
        telephony_routes(bad, secret="s", engines=Engines(llm=ScriptedLLM(), tts=None, stt=None),
                         connections=ConnectionTracker(), clock=Clock(), metrics=ServerMetrics(), memories=None)


def test_twilio_signatures_match_twilios_own_test_vectors() -> None:
    # The vectors of Twilio's Python library (tests/unit/test_request_validator.py).
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": ["CA1234567890ABCDE"], "Digits": ["1234"], "From": ["+14158675309"],
              "To": ["+18005551212"], "Caller": ["+14158675309"]}
    assert twilio_signature("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = {"Sid": ["CA123"], "SidAccount": ["AC123"], "Digits": ["5678", "1234"]}
    assert twilio_signature("12345", url, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    assert signature_valid("12345", url.replace(".com", ".com:443"), params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not signature_valid("12345", url, params, None)
    assert not signature_valid("54321", url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def test_the_caller_is_the_username_unless_mapped_or_withheld() -> None:
    assert caller_username("+15551234567", "CA1", {}) == "+15551234567"
    assert caller_username("447700900000", "uuid-1", {}) == "447700900000"  # Vonage's numbers have no +
    assert caller_username("+15551234567", "CA1", {"+15551234567": "alice"}) == "alice"
    # Withheld numbers share no history: each call is someone new.
    assert caller_username("anonymous", "CA1", {}) == "withheld-CA1"
    assert caller_username("", "CA2", {}) == "withheld-CA2" != caller_username("Restricted", "CA3", {})


def test_a_carriers_webhook_is_served_only_once_its_secret_is_set() -> None:
    config = from_mapping({"telephony": {"carriers": ["telnyx", "plivo", "vonage"]}},
                          environ={"LIVETX_VONAGE_SIGNATURE_SECRET": "v0n"})
    routes = telephony_routes(config, secret="s", engines=Engines(llm=ScriptedLLM(), tts=None, stt=None),
                              connections=ConnectionTracker(), clock=Clock(), metrics=ServerMetrics(), memories=None)
    assert sorted(routes) == ["/telephony/plivo/stream", "/telephony/telnyx/stream", "/telephony/vonage/stream",
                              "/telephony/vonage/voice"]


def test_the_pacer_keeps_the_carrier_at_most_its_buffer_ahead_and_in_order() -> None:
    clock, sent = Clock(), []
    pacer = Pacer(sent.append, clock, ahead_ms=1000)
    for piece in (b"a", b"b", b"c", b"d"):
        pacer.send(piece, 0.5)
    pacer.send({"event": "mark"})
    assert sent == [b"a", b"b", b"c"]  # 1.5 s sent: playing ends 1 s ahead of the clock at the third
    clock.advance(0.5)
    assert sent == [b"a", b"b", b"c", b"d", {"event": "mark"}]  # the mark waits behind the audio before it
    pacer.send(b"e", 0.5)
    pacer.send(b"f", 0.5)
    assert sent[-1] == {"event": "mark"}  # the carrier holds 1.5 s already
    clock.advance(0.5)
    assert sent[-1] == b"e"
    pacer.drop()  # a clear: what is held is never sent
    clock.advance(5)
    assert sent[-1] == b"e" and not clock.getDelayedCalls()
    unpaced = Pacer(sent.append, clock, ahead_ms=None)
    for piece in (b"x", b"y", b"z"):
        unpaced.send(piece, 10.0)
    assert sent[-3:] == [b"x", b"y", b"z"]


def test_a_long_vonage_reply_is_sent_as_it_plays() -> None:
    host = Host(Clock(), VONAGE)
    host.call.receive({"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "call": "uuid-1"})
    host.call.receive({"event": "websocket:dtmf", "digit": "1", "duration": 260})
    host.clock.advance(0.5)
    reply(host, *[f"Sentence {n}. " for n in range(50)])  # 50 × 400 ms: 20 s of speech
    while not all(d.called for _, d in host.tts.requests):  # the session asks for the next sentences as each is done
        host.tts.finish(next(i for i, (_, d) in enumerate(host.tts.requests) if not d.called))
    assert len(host.tts.requests) == 50
    held_back = len(host.audio)
    assert held_back == (15_000 + 20) // 20  # 15 s ahead, then one more packet's worth may go
    host.clock.advance(1)
    assert len(host.audio) == held_back + 50  # a second later, a second more
    host.clock.advance(5)
    assert len(host.audio) == 50 * 400 // 20 and host.sent[-1]["payload"]["name"] == "livetx-1-49"


def test_a_vonage_post_is_signed_over_its_json_body() -> None:
    import hashlib

    import jwt

    from livetx.telephony.vonage import vonage_signed
    from livetx.telephony.webhook import Incoming

    body = b'{"from":"447700900000","to":"447700900001","uuid":"aaaa","conversation_uuid":"CON-aaaa"}'
    secret, now = "signature-secret-of-thirty-two-b", 1_800_000_000.0

    def asked(claims: dict[str, Any], sent: bytes = body) -> bool:
        token = jwt.encode({"iat": int(now), "iss": "Vonage", **claims}, secret, algorithm="HS256")
        incoming = Incoming(method="POST", url="https://voice.example.com/telephony/vonage/voice", body=sent,
                            fields={}, header=lambda name: f"Bearer {token}" if name == "authorization" else None)
        return vonage_signed(secret, incoming, now)

    digest = hashlib.sha256(body).hexdigest()
    assert asked({"payload_hash": digest})
    assert not asked({"payload_hash": digest}, body.replace(b"447700900000", b"447700900999"))  # changed body
    assert not asked({"payload_hash": digest, "iat": int(now) - 600})  # issued ten minutes ago
    assert asked({})  # a JWT without payload_hash is checked by its signature alone


@pytest.mark.parametrize("url, params", [
    ("https://voice.example.com/telephony/plivo/voice", {"CallUUID": ["c1"], "From": ["+15551230001"]}),
    ("https://voice.example.com/telephony/plivo/voice?b=2&a=1", {"From": ["+1555"], "To": ["+1666"]}),
    ("https://voice.example.com/telephony/plivo/voice?a=1", {}),
    ("https://voice.example.com/telephony/plivo/voice", {"Digits": ["5", "1"], "From": ["+1555"]}),
])
def test_plivo_signatures_are_what_plivos_own_library_accepts(url: str, params: dict[str, list[str]]) -> None:
    signature_v3 = pytest.importorskip("plivo.utils.signature_v3")  # the test extra
    from livetx.telephony.plivo import plivo_signature

    signature = plivo_signature("auth-token", url, params, "nonce-1")
    flat = {k: v if len(v) > 1 else v[0] for k, v in params.items()}
    assert signature_v3.validate_v3_signature("POST", url, "nonce-1", "auth-token", signature, dict(flat))
    assert not signature_v3.validate_v3_signature("POST", url, "nonce-2", "auth-token", signature, dict(flat))
