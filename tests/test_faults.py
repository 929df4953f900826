"""Provider faults: a model or speech service that hangs, refuses, talks garbage or drops.

Each fault costs the turn one coded error frame and an ``end``; the socket
stays open and the next turn works. The services are the in-process
OpenAI-compatible fake, so livetx's real HTTP providers meet each fault.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
import pytest_twisted

from livetx.testing.openai_server import FakeOpenAI

from .support import LiveClient, connect, replied
from .test_live_ws import LIVE, kinds
from .test_voice import stream

TIMEOUT = 0.5
PROVIDERS = {"llm": "LLM_ERROR", "tts": "TTS_ERROR", "stt": "STT_ERROR"}
#: How each provider's messages name its service.
SERVICES = {"llm": "chat model", "tts": "speech service", "stt": "transcription service"}
#: A pattern each fault's error message starts with, per provider (the code says which service).
FAULTS = {
    "hangs": dict.fromkeys(PROVIDERS, r"{service} timed out after 0\.5 s$"),
    "refuses": dict.fromkeys(PROVIDERS, "cannot reach the {service}: Connection was refused"),
    "garbage": {
        "llm": "{service} sent an event that is not JSON$",
        "tts": "{service} returned no audio$",
        "stt": "{service} sent no text$",
    },
    "not a stream": {
        "llm": "{service} sent no event stream$",
        "tts": "{service} sent text/html, not audio$",
        "stt": "{service} sent no text$",
    },
    # (The providers word this one as a list of Failure reprs, wrapped by twisted.web's ResponseFailed.)
    "drops": dict.fromkeys(PROVIDERS, "cannot reach the {service}: Connection to the other side was lost"),
}


def refused_url() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def inflict(fake: FakeOpenAI, fault: str, provider: str) -> None:
    if fault == "hangs":
        fake.hang, fake.speech_delay, fake.transcription_delay = True, 30.0, 30.0
    elif fault == "drops":
        fake.drop = True
    elif fault == "not a stream":  # a 200 with a body of the wrong kind altogether
        fake.fail_status, fake.fail_body, fake.fail_type = 200, "<html>a proxy page</html>", b"text/html"
    elif fault == "garbage":
        fake.inject = b"data: {this is not json\n\n"  # mid-stream, for the model
        if provider == "stt":
            fake.fail_status, fake.fail_body = 200, '{"text": 42}'
        elif provider == "tts":
            fake.fail_status, fake.fail_body = 200, ""


def heal(fake: FakeOpenAI) -> None:
    fake.hang, fake.drop, fake.inject = False, False, b""
    fake.speech_delay = fake.transcription_delay = 0.0
    fake.fail_status, fake.fail_type = None, b"application/json"


def config(provider: str, base_url: str) -> str:
    service = f'provider = "openai"\nbase_url = "{base_url}"\ntimeout = {TIMEOUT}\n'
    sections = {"llm": "", "tts": 'provider = "none"\n', "stt": 'provider = "none"\n'}
    sections[provider] = service
    return "".join(f"[{name}]\n{body}" for name, body in sections.items())


async def one_turn(client: LiveClient, provider: str) -> list[dict[str, Any]]:
    if provider == "stt":
        stream(client, b"\x10\x00" * 4000, "s")
        return await client.until("end")
    return await client.turn("say something")


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_a_provider_fault_is_a_coded_error_and_the_session_goes_on(
    livetx: Any, openai: FakeOpenAI, provider: str, fault: str
) -> None:
    base_url = refused_url() if fault == "refuses" else openai.base_url
    server = await livetx(config(provider, base_url))
    client = await connect(server.url(LIVE, token=server.token()))
    inflict(openai, fault, provider)
    frames = await one_turn(client, provider)
    errors = [f for f in frames if f["t"] == "error"]
    assert [e["code"] for e in errors] == [PROVIDERS[provider]], frames
    expected = FAULTS[fault][provider].format(service=SERVICES[provider])
    assert re.match(expected, errors[0]["data"]), errors[0]["data"]
    assert "Traceback" not in errors[0]["data"]
    assert kinds(frames)[-1] == "end"
    if provider == "tts":  # the words still reach the screen
        assert "bot_delta_chunk" in kinds(frames)

    heal(openai)
    if fault == "refuses":  # nothing to heal: the session still answers, with the same code
        again = await one_turn(client, provider)
        assert [f["code"] for f in again if f["t"] == "error"] == [PROVIDERS[provider]]
    else:
        again = await one_turn(client, provider)
        assert "error" not in kinds(again), again
        assert replied(again)
        if provider == "tts":
            assert "response" in kinds(again)
    assert client.close_code is None
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_an_endless_line_from_the_model_fails_the_turn_at_the_cap(livetx: Any, openai: FakeOpenAI) -> None:
    """Issue 13.7: a line with no end is cut at 1 MiB, not rescanned chunk after chunk for the whole timeout."""
    server = await livetx(config("llm", openai.base_url).replace(f"timeout = {TIMEOUT}", "timeout = 30"))
    client = await connect(server.url(LIVE, token=server.token()))
    openai.inject = b"data: " + b"x" * (3 * 1024 * 1024)  # and no newline
    frames = await client.turn("say something")
    errors = [f for f in frames if f["t"] == "error"]
    assert [(e["code"], e["data"]) for e in errors] == [
        ("LLM_ERROR", "chat model sent an event-stream line longer than 1048576 characters")]
    heal(openai)
    assert replied(await client.turn("and now?"))
    await client.close_and_wait()
