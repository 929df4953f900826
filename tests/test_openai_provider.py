"""The OpenAI-compatible providers against a real HTTP server on loopback."""

from __future__ import annotations

import io
import wave
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported

from livetx.config import LLMConfig, STTConfig, TTSConfig
from livetx.fences.treq import Endpoints, make_http_client
from livetx.providers.base import LLMError, STTError, TTSError, Voices
from livetx.providers.openai import OPENAI_TTS1_VOICES, OPENAI_VOICES, OpenAIChat, OpenAISpeech, OpenAITranscriber

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest_twisted.async_yield_fixture
async def http() -> AsyncIterator[Any]:
    client, pool = make_http_client(reactor)
    yield client
    await pool.closeCachedConnections()


async def settle() -> None:
    await deferLater(reactor, 0.05, lambda: None)


async def until(check: Any) -> None:
    for _ in range(100):
        if check():
            return
        await deferLater(reactor, 0.02, lambda: None)
    assert check()


@pytest_twisted.ensureDeferred
async def test_chat_streams_deltas_in_order(openai: Any, http: Any) -> None:
    openai.reply = "One two three. Four!"
    chat = OpenAIChat(LLMConfig(base_url=openai.base_url, model="m1", api_key="sk-x"), http, reactor)
    deltas: list[str] = []
    await chat.stream(MESSAGES, deltas.append)
    assert deltas == ["One ", "two ", "three. ", "Four!"]
    request = openai.requests[-1]
    assert request.json == {"model": "m1", "messages": MESSAGES, "stream": True}
    assert request.headers["authorization"] == "Bearer sk-x"


@pytest_twisted.ensureDeferred
async def test_no_key_no_authorization_header(openai: Any, http: Any) -> None:
    chat = OpenAIChat(LLMConfig(base_url=openai.base_url), http, reactor)
    await chat.stream(MESSAGES, lambda _: None)
    assert "authorization" not in openai.requests[-1].headers


@pytest_twisted.ensureDeferred
async def test_cancel_mid_stream_closes_the_upstream_connection(openai: Any, http: Any) -> None:
    openai.token_delay = 0.05
    chat = OpenAIChat(LLMConfig(base_url=openai.base_url), http, reactor)
    deltas: list[str] = []
    d = chat.stream(MESSAGES, deltas.append)
    await until(lambda: len(deltas) >= 2)
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    await until(lambda: openai.lost == ["/v1/chat/completions"])
    count = len(deltas)
    await settle()
    assert len(deltas) == count


@pytest_twisted.ensureDeferred
async def test_cancel_before_headers(openai: Any, http: Any) -> None:
    chat = OpenAIChat(LLMConfig(base_url=openai.base_url), http, reactor)
    d = chat.stream(MESSAGES, lambda _: None)
    d.cancel()
    with pytest.raises(CancelledError):
        await d


@pytest.mark.parametrize("status", [401, 500])
@pytest_twisted.ensureDeferred
async def test_http_errors_become_llm_errors(openai: Any, http: Any, status: int) -> None:
    openai.fail_status = status
    chat = OpenAIChat(LLMConfig(base_url=openai.base_url, api_key="sk-secret"), http, reactor)
    with pytest.raises(LLMError) as caught:
        await chat.stream(MESSAGES, lambda _: None)
    assert str(status) in caught.value.message and "fail" in caught.value.message
    assert "sk-secret" not in caught.value.message


@pytest_twisted.ensureDeferred
async def test_unreachable_service(http: Any) -> None:
    chat = OpenAIChat(LLMConfig(base_url="http://127.0.0.1:9/v1"), http, reactor)
    with pytest.raises(LLMError, match="cannot reach"):
        await chat.stream(MESSAGES, lambda _: None)


@pytest_twisted.ensureDeferred
async def test_stalled_stream_times_out_and_hangs_up(openai: Any, http: Any) -> None:
    openai.hang = True
    chat = OpenAIChat(LLMConfig(base_url=openai.base_url, timeout=0.3), http, reactor)
    with pytest.raises(LLMError, match="timed out"):
        await chat.stream(MESSAGES, lambda _: None)
    await until(lambda: openai.lost == ["/v1/chat/completions"])


@pytest_twisted.ensureDeferred
async def test_consumer_error_ends_the_stream(openai: Any, http: Any) -> None:
    openai.reply = lambda messages: "ok"
    chat = OpenAIChat(LLMConfig(base_url=openai.base_url), http, reactor)

    def explode(_: str) -> None:
        raise LLMError("consumer refused")

    with pytest.raises(LLMError, match="consumer refused"):
        await chat.stream(MESSAGES, explode)


@pytest_twisted.ensureDeferred
async def test_malformed_event_is_an_llm_error_and_hangs_up(openai: Any, http: Any) -> None:
    openai.token_delay = 0.01
    openai.inject = b"data: {not json\n\n"
    chat = OpenAIChat(LLMConfig(base_url=openai.base_url), http, reactor)
    with pytest.raises(LLMError, match="not JSON"):
        await chat.stream(MESSAGES, lambda _: None)
    await until(lambda: openai.lost == ["/v1/chat/completions"])


@pytest_twisted.ensureDeferred
async def test_error_event_in_stream(openai: Any, http: Any) -> None:
    openai.inject = b'data: {"error": {"message": "overloaded"}}\n\n'
    chat = OpenAIChat(LLMConfig(base_url=openai.base_url), http, reactor)
    with pytest.raises(LLMError, match="overloaded"):
        await chat.stream(MESSAGES, lambda _: None)


@pytest_twisted.ensureDeferred
async def test_reasoning_is_not_spoken_and_tokens_are_tunable(openai: Any, http: Any) -> None:
    openai.reply = "abcdef"
    openai.tokenize = lambda text: [text[i : i + 2] for i in range(0, len(text), 2)]
    openai.inject = b'data: {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]}\n\n'
    chat = OpenAIChat(LLMConfig(base_url=openai.base_url), http, reactor)
    deltas: list[str] = []
    await chat.stream(MESSAGES, deltas.append)
    assert deltas == ["ab", "cd", "ef"]


@pytest_twisted.ensureDeferred
async def test_done_finishes_even_if_the_body_stays_open(openai: Any, http: Any) -> None:
    """The turn goes on at ``[DONE]``; the connection is hung up on exactly ``_DRAIN_SECONDS`` later.

    The deadlines run on a Clock (issue 27, item 19): the stream's own
    timeout never fires here, so finishing at all proves ``[DONE]`` ended it.
    """
    from livetx.providers.openai import _DRAIN_SECONDS

    openai.keep_open = True
    openai.reply = "Done here."
    clock = Clock()
    chat = OpenAIChat(LLMConfig(base_url=openai.base_url, timeout=5), http, clock)
    deltas: list[str] = []
    await chat.stream(MESSAGES, deltas.append).addTimeout(10, reactor)  # the failure: never finishing
    assert deltas == ["Done ", "here."]
    clock.advance(_DRAIN_SECONDS - 0.01)
    await deferLater(reactor, 0.1, lambda: None)
    assert openai.lost == []  # still draining
    clock.advance(0.01)
    await until(lambda: openai.lost == ["/v1/chat/completions"])  # then hung up on


@pytest_twisted.ensureDeferred
async def test_echoed_key_is_redacted(openai: Any, http: Any) -> None:
    openai.fail_status = 401
    openai.fail_body = '{"error": "bad key sk-secret-123"}'
    chat = OpenAIChat(LLMConfig(base_url=openai.base_url, api_key="sk-secret-123"), http, reactor)
    with pytest.raises(LLMError, match="401") as caught:
        await chat.stream(MESSAGES, lambda _: None)
    assert "sk-secret-123" not in caught.value.message and "***" in caught.value.message


@pytest_twisted.ensureDeferred
async def test_speech_returns_a_wav(openai: Any, http: Any) -> None:
    tts = OpenAISpeech(TTSConfig(base_url=openai.base_url, voice="nova"), http, reactor)
    audio = await tts.synthesize("Hello there, friend.")
    with wave.open(io.BytesIO(audio)) as w:
        assert w.getnframes() > 0
    assert openai.requests[-1].json == {
        "model": "tts-1", "input": "Hello there, friend.", "voice": "nova", "response_format": "wav",
    }
    for text in ("two", "three"):
        await tts.synthesize(text)
    await tts.synthesize("Picked.", "shimmer")  # a session's voice
    assert openai.requests[-1].json["voice"] == "shimmer"
    assert len({r.port for r in openai.requests}) == 1  # one kept-alive connection
    openai.fail_status = 503
    with pytest.raises(TTSError, match="503"):
        await tts.synthesize("again")
    openai.fail_status = None
    openai.speech_delay = 1.0
    slow = OpenAISpeech(TTSConfig(base_url=openai.base_url, timeout=0.2), http, reactor)
    with pytest.raises(TTSError, match="timed out"):
        await slow.synthesize("too slow")


def test_speech_offers_openais_voices_for_the_model_or_the_configured_list(http: Any) -> None:
    def offered(**section: Any) -> Voices:
        return OpenAISpeech(TTSConfig(**section), http, reactor).voices()

    assert offered() == Voices(OPENAI_TTS1_VOICES, "alloy") and "ballad" not in OPENAI_TTS1_VOICES
    assert offered(model="gpt-4o-mini-tts", voice="marin") == Voices(OPENAI_VOICES, "marin")
    # A compatible server's own (Kokoro's), with the configured voice always among them.
    assert offered(voices=["af_bella", "am_adam"], voice="af_heart") == Voices(("af_heart", "af_bella", "am_adam"), "af_heart")


@pytest.mark.parametrize(
    ("kind", "error"), [(b"text/html; charset=utf-8", "sent text/html, not audio"), (b"audio/wav", "no WAV audio")]
)
@pytest_twisted.ensureDeferred
async def test_speech_that_is_not_audio_is_a_tts_error(openai: Any, http: Any, kind: bytes, error: str) -> None:
    # A proxy's or captive portal's page answered with 200 must not be played as sound.
    openai.fail_status, openai.fail_body, openai.fail_type = 200, "<html>Sign in to continue</html>", kind
    tts = OpenAISpeech(TTSConfig(base_url=openai.base_url), http, reactor)
    with pytest.raises(TTSError, match=error):
        await tts.synthesize("Hello.")
    openai.fail_status = None
    assert (await tts.synthesize("Hello.")).startswith(b"RIFF")


@pytest_twisted.ensureDeferred
async def test_transcription_uploads_multipart(openai: Any, http: Any) -> None:
    openai.transcript = "turn on the lights"
    stt = OpenAITranscriber(STTConfig(base_url=openai.base_url, language="en"), http, reactor)
    wav = b"RIFF-not-really-a-wav"
    assert await stt.transcribe(wav) == "turn on the lights"
    fields = openai.requests[-1].fields
    assert fields["file"] == wav
    assert fields["model"] == b"whisper-1" and fields["language"] == b"en"
    openai.fail_status = 400
    with pytest.raises(STTError, match="400"):
        await stt.transcribe(wav)


@pytest_twisted.ensureDeferred
async def test_busy_sessions_reuse_their_upstream_connections(openai: Any, http: Any) -> None:
    # 20 sessions speaking at once: the second wave rides the first wave's sockets.
    tts = OpenAISpeech(TTSConfig(base_url=openai.base_url), http, reactor)
    openai.speech_delay = 0.05  # all 20 are in flight together
    await gatherResults([tts.synthesize(f"first {i}") for i in range(20)])
    first = {r.port for r in openai.requests}
    await gatherResults([tts.synthesize(f"second {i}") for i in range(20)])
    second = {r.port for r in openai.requests[20:]}
    assert len(first) == 20 and second <= first


def test_request_uri_is_encoded_once_per_path(http: Any) -> None:
    chat = OpenAIChat(LLMConfig(base_url="http://bücher.example:8000/v1/"), http, reactor)
    url = chat._upstream.url("/chat/completions")
    assert url.to_text() == "http://xn--bcher-kva.example:8000/v1/chat/completions"
    assert chat._upstream.url("/chat/completions") is url
    assert url.to_uri() is url  # so treq does not encode it again on every request


def test_one_endpoint_per_upstream_origin() -> None:
    endpoints = Endpoints(reactor, connect_timeout=5)
    plain = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:8000/v1/audio/speech"))
    assert endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:8000/v1/chat/completions")) is plain
    assert isinstance(plain, HostnameEndpoint)
    secure = endpoints.endpointForURI(URI.fromBytes(b"https://api.example/v1/chat/completions"))
    assert secure is not plain and not isinstance(secure, HostnameEndpoint)  # wrapped in TLS
    with pytest.raises(SchemeNotSupported):
        endpoints.endpointForURI(URI.fromBytes(b"ftp://127.0.0.1/v1"))


@pytest_twisted.ensureDeferred
async def test_a_successful_request_writes_no_log_line(openai: Any, http: Any) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await OpenAISpeech(TTSConfig(base_url=openai.base_url), http, reactor).synthesize("Quiet, please.")
        openai.fail_status = 500
        with pytest.raises(TTSError):
            await OpenAISpeech(TTSConfig(base_url=openai.base_url), http, reactor).synthesize("Loud.")
    finally:
        globalLogPublisher.removeObserver(events.append)
    ours = [e for e in events if e.get("log_namespace") == "livetx.providers.openai"]
    assert [e["log_format"].split()[2] for e in ours] == ["{path}"] and "500" in ours[0]["reason"]
