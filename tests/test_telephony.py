"""Phone calls over real sockets: fake carriers speak their documented frames at real time.

The caller's questions are eSpeak speech converted to the carrier's
format; PocketSphinx (with a grammar) hears them; the reply is eSpeak
speech the carrier gets back in its own format, which PocketSphinx must
hear again after the round trip.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from livetx.audio import to_wav
from livetx.config import STTConfig
from livetx.providers.sphinx import SphinxRecognizer
from livetx.storage import jwt_secret
from livetx.telephony.codec import ALAW, L16, MULAW, AudioFormat
from livetx.telephony.tokens import CallTokens

from .carriers import FakeCarrier, PlivoShape, Shape, TelnyxShape, TwilioShape, decoded, dial
from .test_live_ws import eventually, openai_config
from .test_voice import GRAMMAR, spoken

AUTH_TOKEN = "test-twilio-auth-token"
CALLER = "+15551230001"
#: Three sentences; the first is one the grammar knows, so the round trip can be heard.
REPLY = ("Turn off the kitchen lights. I have switched off the lights in the kitchen for you, "
         "and the other rooms are still lit as you left them. Is there anything else I can do?")


def signed(url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    """X-Twilio-Signature, computed here from Twilio's description, not with the server's code."""
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


async def phone_server(livetx: Any, openai: Any, tmp_path: Path, extra: str = "") -> Any:
    settings = f"""carriers = ["twilio", "telnyx", "plivo"]
twilio_auth_token = "{AUTH_TOKEN}"
dtmf_wait_ms = 300"""
    return await heard_server(livetx, openai, tmp_path, "telephony", settings, extra, REPLY)


async def heard_server(livetx: Any, openai: Any, tmp_path: Path, section: str, settings: str, extra: str,
                       reply: str) -> Any:
    """A server that hears the home grammar (pocketsphinx) and answers ``reply``, with ``section`` set up."""
    grammar = tmp_path / "home.jsgf"
    grammar.write_text(GRAMMAR)
    config = openai_config(openai.base_url, tts=False) + f"""
[stt]
provider = "pocketsphinx"
grammar = "{grammar}"

[{section}]
{settings}

[{section}.turn]
min_speech_ms = 100
silence_ms = 500
{extra}"""
    openai.reply = reply
    openai.token_delay = 0.01
    return await livetx(config)


async def answer(server: Any, params: dict[str, str], signature: str | None) -> tuple[int, bytes]:
    url = server.url("/telephony/twilio/voice", scheme="http")
    headers = {"Content-Type": ["application/x-www-form-urlencoded"]}
    if signature is not None:
        headers["X-Twilio-Signature"] = [signature]
    response = await treq.post(url, data=urlencode(params).encode(), headers=headers, reactor=reactor)
    return response.code, await response.content()


@pytest.fixture(scope="module")
def hear(tmp_path_factory: pytest.TempPathFactory) -> SphinxRecognizer:
    """One recognizer (one decoding process) hears every reply of this module."""
    grammar = tmp_path_factory.mktemp("hear") / "hear.jsgf"
    grammar.write_text(GRAMMAR)
    return SphinxRecognizer(STTConfig(provider="pocketsphinx", grammar=str(grammar), threads=1), None, reactor)


def first_sentence(carrier: FakeCarrier, audio: AudioFormat) -> bytes:
    """The reply audio up to its first mark, decoded to 16 kHz PCM."""
    wire = bytearray()
    for _, kind, value in carrier.received:
        if kind == "mark":
            break
        if kind == "media":
            wire += value if isinstance(value, bytes) else value[0]
    return decoded(bytes(wire), audio)


async def asking(server: Any, call_id: str) -> FakeCarrier:
    """A Twilio call from :data:`CALLER` that has asked its question and heard the reply's first sentence."""
    tokens = CallTokens(jwt_secret(server.options["settings"], server.data_dir), 30, reactor)
    carrier = await dial(server.url("/telephony/twilio/stream"), TwilioShape(AudioFormat(MULAW, 8000)),
                         {"token": tokens.issue(CALLER, CALLER, call_id)}, call_id=call_id)
    carrier.begin()
    carrier.say(await spoken("turn off the bedroom lights"))
    await carrier.wait(lambda: len(carrier.echoed) >= 1, timeout=30)
    return carrier


def assistant_turns(openai: Any) -> list[str]:
    """What the model was last told it said, turn by turn (its context is the stored history)."""
    messages = openai.requests_to("/chat/completions")[-1].json["messages"]
    return [m["content"] for m in messages if m["role"] == "assistant" and m.get("content")]


@pytest_twisted.ensureDeferred
async def test_webhook_signature_good_bad_and_missing(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await phone_server(livetx, openai, tmp_path)
    url = server.url("/telephony/twilio/voice", scheme="http")
    params = {"CallSid": "CA77", "From": CALLER, "To": "+15550000000", "AccountSid": "AC1"}
    assert (await answer(server, params, None))[0] == 403
    assert (await answer(server, params, signed(url, params, "another-token")))[0] == 403
    assert (await answer(server, {**params, "From": "+15559999999"}, signed(url, params)))[0] == 403
    code, body = await answer(server, params, signed(url, params))
    assert code == 200
    stream = ElementTree.fromstring(body).find("Connect/Stream")
    assert stream is not None and stream.get("url") == server.url("/telephony/twilio/stream")
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert parameters["caller"] == CALLER
    tokens = CallTokens(jwt_secret(server.options["settings"], server.data_dir), 30, reactor)
    assert tokens.verify(parameters["token"], "CA77") == CALLER


@pytest_twisted.ensureDeferred
async def test_a_stream_without_a_valid_token_is_closed_1008(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await phone_server(livetx, openai, tmp_path)
    tokens = CallTokens(jwt_secret(server.options["settings"], server.data_dir), 30, reactor)
    for parameters in ({}, {"token": "not-a-token"}, {"token": tokens.issue(CALLER, CALLER, "CA-other")},
                       {"token": server.token(CALLER)}):
        carrier = await dial(server.url("/telephony/twilio/stream"), TwilioShape(AudioFormat(MULAW, 8000)),
                             parameters, call_id="CA1")
        carrier.begin()
        await carrier.closed.addTimeout(10, reactor)
        assert carrier.close_code == 1008, parameters


@pytest_twisted.ensureDeferred
async def test_a_stream_that_never_starts_is_closed(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await phone_server(livetx, openai, tmp_path, "\n[server]\nhandshake_timeout = 0.5\n")
    carrier = await dial(server.url("/telephony/telnyx/stream"), TelnyxShape(AudioFormat(MULAW, 8000)))
    await carrier.closed.addTimeout(10, reactor)
    assert carrier.close_code == 1008


@pytest_twisted.ensureDeferred
async def test_twilio_call_ask_interrupt_dtmf_and_end_call(
        livetx: Any, openai: Any, tmp_path: Path, hear: SphinxRecognizer) -> None:
    server = await phone_server(livetx, openai, tmp_path)
    url = server.url("/telephony/twilio/voice", scheme="http")
    params = {"CallSid": "CA1", "From": CALLER, "To": "+15550000000"}
    _, twiml = await answer(server, params, signed(url, params))
    stream = ElementTree.fromstring(twiml).find("Connect/Stream")
    assert stream is not None
    mulaw = AudioFormat(MULAW, 8000)
    carrier = await dial(stream.get("url") or "", TwilioShape(mulaw),
                         {p.get("name") or "": p.get("value") or "" for p in stream.findall("Parameter")}, call_id="CA1")
    carrier.begin()

    # Ask: the reply comes back as μ-law 8 kHz speech, a mark after each sentence.
    carrier.say(await spoken("turn off the bedroom lights"))
    await carrier.wait(lambda: len(carrier.echoed) >= 1, timeout=30)
    assert openai.requests_to("/chat/completions")[0].json["messages"][-1]["content"] == "turn off the bedroom lights"
    assert await hear.transcribe(to_wav(first_sentence(carrier, mulaw))) == "turn off the kitchen lights"
    marks = [name for _, name in carrier.of("mark")]
    assert marks[0] == "livetx-1-0"

    # Interrupt while the second sentence plays: clear, and the stored reply is what was heard.
    echoed_before = list(carrier.echoed)
    carrier.say(await spoken("turn on the hallway lights"))
    await carrier.wait(lambda: bool(carrier.of("clear")), timeout=15)
    assert echoed_before == ["livetx-1-0"]  # the first sentence played, the second had not
    # ``clear`` within 300 ms of the detector's decision, which waits min_speech_ms (100) of speech.
    assert carrier.onset is not None and carrier.of("clear")[0][0] - carrier.onset <= 0.3 + 0.1
    await carrier.wait(lambda: len(openai.requests_to("/chat/completions")) >= 2, timeout=30)
    assert assistant_turns(openai) == ["Turn off the kitchen lights."]

    # A key press: the model is told which key.
    await carrier.wait(lambda: len([n for n in carrier.echoed if n.startswith("livetx-2-")]) >= 1, timeout=30)
    openai.tool_calls = lambda messages, tools: (
        [{"name": "end_call", "arguments": {}}] if "pressed 9" in str(messages[-1].get("content")) else None)
    openai.reply = "Goodbye."
    carrier.send({"event": "dtmf", "streamSid": carrier.stream, "dtmf": {"track": "inbound_track", "digit": "9"}})

    # The model hangs up: the goodbye plays to its end, then the socket closes.
    await carrier.closed.addTimeout(30, reactor)
    assert carrier.close_code == 1000
    told = [m for m in openai.requests_to("/chat/completions")[-2].json["messages"] if m["role"] == "user"]
    assert "pressed 9" in told[-1]["content"]
    assert carrier.echoed[-1] == "livetx-goodbye" and "end_call" in str(openai.requests_to("/chat/completions")[-1].json)


@pytest_twisted.ensureDeferred
async def test_a_caller_who_hangs_up_keeps_what_they_heard(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await phone_server(livetx, openai, tmp_path)
    carrier = await asking(server, "CA1")
    # Bad frames are refused and counted; the call goes on.
    carrier.send({"event": "media", "streamSid": carrier.stream, "media": {"payload": "%%% not base64"}})
    carrier.send({"event": "media", "streamSid": "MZ-someone-else", "media": {"payload": ""}})
    carrier.send({"event": "twirl", "streamSid": carrier.stream})
    wanted = 'livetx_refused_frames_total{code="UNKNOWN_MESSAGE_TYPE",source="twilio"}'
    for _ in range(50):  # the socket's frames and this request travel apart
        metrics = await (await treq.get(server.url("/metrics", scheme="http"), reactor=reactor)).text()
        if wanted in metrics:
            break
        await deferLater(reactor, 0.05)
    for code in ("INVALID_AUDIO", "INVALID_MESSAGE_FORMAT", "UNKNOWN_MESSAGE_TYPE"):
        assert f'livetx_refused_frames_total{{code="{code}",source="twilio"}} 1.0' in metrics, code
    assert "livetx_errors_total{" not in metrics  # no error frame was sent: the carrier has none
    assert carrier.close_code is None
    carrier.hang_up()
    await carrier.closed.addTimeout(10, reactor)
    connections = server.service.getServiceNamed("connections")
    await eventually(lambda: len(connections) == 0, timeout=10)  # the call leaves the tracker once it is over
    # The next call from the same number brings the history back, cut to the first sentence.
    again = await asking(server, "CA2")
    assert assistant_turns(openai) == ["Turn off the kitchen lights."]
    again.hang_up()
    await again.closed.addTimeout(10, reactor)


async def other_carrier(livetx: Any, openai: Any, tmp_path: Path, hear: SphinxRecognizer, path: str,
                        shape: Shape) -> FakeCarrier:
    server = await phone_server(livetx, openai, tmp_path)
    tokens = CallTokens(jwt_secret(server.options["settings"], server.data_dir), 30, reactor)
    token = tokens.issue(CALLER, CALLER, "call-1")
    carrier = await dial(server.url(path, token=token), shape, call_id="call-1")
    carrier.begin()
    carrier.say(await spoken("turn off the bedroom lights"))
    await carrier.wait(lambda: len(carrier.echoed) >= 1, timeout=30)
    assert await hear.transcribe(to_wav(first_sentence(carrier, shape.audio))) == \
        "turn off the kitchen lights"
    carrier.say(await spoken("turn on the hallway lights"))  # over the reply: the carrier's clear
    await carrier.wait(lambda: bool(carrier.of("clear")), timeout=15)
    await carrier.wait(lambda: len(openai.requests_to("/chat/completions")) >= 2, timeout=30)
    assert carrier.of("clear") and assistant_turns(openai) == ["Turn off the kitchen lights."]

    def told() -> str:
        return str(openai.requests_to("/chat/completions")[-1].json["messages"][-1]["content"])

    carrier.send(shape.dtmf(carrier.stream, "4"))
    await carrier.wait(lambda: "pressed 4" in told(), timeout=30)
    assert "pressed 4" in told() and carrier.close_code is None
    carrier.hang_up()
    await carrier.closed.addTimeout(10, reactor)
    return carrier


@pytest_twisted.ensureDeferred
async def test_telnyx_call_in_a_law(livetx: Any, openai: Any, tmp_path: Path, hear: SphinxRecognizer) -> None:
    await other_carrier(livetx, openai, tmp_path, hear, "/telephony/telnyx/stream", TelnyxShape(AudioFormat(ALAW, 8000)))


@pytest_twisted.ensureDeferred
async def test_plivo_call_in_l16_16k(livetx: Any, openai: Any, tmp_path: Path, hear: SphinxRecognizer) -> None:
    carrier = await other_carrier(livetx, openai, tmp_path, hear, "/telephony/plivo/stream",
                                  PlivoShape(AudioFormat(L16, 16000)))
    media = [value for _, value in carrier.of("media")]
    assert {(content, rate) for _, content, rate in media} == {("audio/x-l16", 16000)}


@pytest_twisted.ensureDeferred
async def test_a_server_that_stops_drains_its_calls_like_its_other_sockets(
        livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await phone_server(livetx, openai, tmp_path)
    carrier = await asking(server, "CA1")
    await server.stop()
    await carrier.closed.addTimeout(10, reactor)
    assert carrier.close_code == 1001


@pytest_twisted.ensureDeferred
async def test_a_carrier_that_stops_reading_is_hung_up_on(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await phone_server(livetx, openai, tmp_path, "\n[server]\nmax_send_buffer_bytes = 16384\n")
    tokens = CallTokens(jwt_secret(server.options["settings"], server.data_dir), 30, reactor)
    carrier = await dial(server.url("/telephony/twilio/stream"), TwilioShape(AudioFormat(MULAW, 8000)),
                         {"token": tokens.issue(CALLER, CALLER, "CA1")}, call_id="CA1")
    carrier.begin()
    carrier.transport.pauseProducing()  # the carrier stops reading: the reply's audio piles up
    # Long enough to fill the loopback socket's kernel buffers too, only past which the server sees it.
    openai.reply = "This sentence is one of very many in a long reply that nobody hears. " * 150
    carrier.say(await spoken("turn off the bedroom lights"))
    connections = server.service.getServiceNamed("connections")
    await eventually(lambda: len(connections) == 1, timeout=30)
    call = next(iter(connections._open))
    await eventually(lambda: call.state != call.STATE_OPEN, timeout=30)
    assert call.buffer is not None and 16384 < call.buffer.waiting < 1024 * 1024
    carrier.transport.resumeProducing()
    await carrier.closed.addTimeout(10, reactor)
    assert carrier.close_code == 1008
