"""``livetx say`` and ``livetx talk`` against a real server on a loopback port."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import wave
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.usage import UsageError

from livetx.audio import SAMPLE_RATE, read_wav, to_wav
from livetx.auth.keys import KeyStore
from livetx.cli import Options
from livetx.client import console
from livetx.client.audio import join_chunks, load_speech
from livetx.client.progress import CLEAR, Progress
from livetx.client.console import metrics_table
from livetx.client.session import TurnRequest, _TurnDriver, socket_address
from livetx.config import TTSConfig
from livetx.providers.espeak import EspeakSpeech

from .test_live_ws import LIVE, OPEN_API, openai_config
from .test_twistd import free_port, make_certificate
from .test_voice import GRAMMAR


class Run:
    """One ``livetx`` client command, run in-process on the test's reactor."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]


async def livetx_client(*argv: str) -> Run:
    options = Options()
    options.parseOptions(list(argv))
    out, err = io.StringIO(), io.StringIO()
    code = await console.run(reactor, options.subOptions, out, err)
    return Run(code, out.getvalue(), err.getvalue())


def base(server: Any) -> str:
    return f"ws://127.0.0.1:{server.port}"


@pytest_twisted.ensureDeferred
async def test_say_streams_the_reply_saves_the_audio_and_prints_metrics(livetx: Any, tmp_path: Path) -> None:
    server = await livetx()
    out = tmp_path / "reply.wav"
    run = await livetx_client("say", base(server), "Good morning.", "How are you?",
                              "--token", server.token(), "--out", str(out))
    assert run.code == 0, run.err
    assert run.out == "Good morning. How are you?\n"  # the echo model
    assert "heard:" not in run.err  # only voice turns say what was heard
    for row in ("client first delta", "client first audio", "llm_ttft", "chat_model"):
        assert row in run.err
    assert re.search(r"^audio chunks +2$", run.err, re.M)
    pcm, rate = read_wav(out.read_bytes())
    assert rate == 22050 and len(pcm) > 0.5 * 2 * rate  # two spoken sentences, joined in order


@pytest_twisted.ensureDeferred
async def test_say_with_an_api_key_prints_json_frames(livetx: Any) -> None:
    server = await livetx()
    key = KeyStore(server.data_dir).create(["chat"])[1]
    run = await livetx_client("say", "--json", "--api-key", key, "--username", "kiosk", base(server), "hi")
    assert run.code == 0, run.err
    kinds = [f["t"] for f in run.frames]
    assert kinds[:2] == ["metrics", "user_msg"] and "end" in kinds and "response" in kinds
    assert "metric" not in run.err  # with --json, stdout and stderr hold no table


@pytest_twisted.ensureDeferred
async def test_talk_resamples_any_wav_and_is_understood(livetx: Any, tmp_path: Path) -> None:
    grammar = tmp_path / "home.jsgf"
    grammar.write_text(GRAMMAR)
    server = await livetx(f'[stt]\nprovider = "pocketsphinx"\ngrammar = "{grammar}"\n')
    speech = await EspeakSpeech(TTSConfig(), None, reactor).synthesize("turn on the kitchen lights")
    pcm, rate = read_wav(speech)
    stereo = tmp_path / "stereo.wav"  # 22.05 kHz stereo in; the server gets 16 kHz mono
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(pcm[i : i + 2] * 2 for i in range(0, len(pcm), 2)))
    run = await livetx_client("talk", base(server), "--wav", str(stereo), "--token", server.token())
    assert run.code == 0, run.err
    assert "heard: turn on the kitchen lights" in run.err
    assert re.search(r"^livetx: sent \d\.\d s of speech, transcribing; waiting for the reply$", run.err, re.M)
    assert run.out == "turn on the kitchen lights\n"
    assert "stt" in run.err and "wav_assemble_time" in run.err


@pytest_twisted.ensureDeferred
async def test_interrupt_after_stops_the_reply(livetx: Any, openai: Any) -> None:
    openai.reply = " ".join(f"This is sentence {i} of a long story." for i in range(40))
    openai.token_delay = 0.02
    server = await livetx(openai_config(openai.base_url))
    run = await livetx_client("say", base(server), "story please", "--token", server.token(),
                              "--interrupt-after", "0.1", "--json")
    assert run.code == 0, run.err
    kinds = [f["t"] for f in run.frames]
    assert kinds[-1] == "stop_play" and "end" not in kinds
    reply = "".join(f["data"]["text"] for f in run.frames if f["t"] == "bot_delta_chunk")
    assert 0 < len(reply) < len(openai.reply)


@pytest_twisted.ensureDeferred
async def test_exit_codes(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await livetx()
    refused = await livetx_client("say", base(server), "hi", "--token", "not-a-jwt")
    assert refused.code == 6 and "the server refused the credential (Invalid token)" in refused.err
    assert "the server's --config (its [store] url" in refused.err and "not-a-jwt" not in refused.err
    unknown_key = await livetx_client("say", base(server), "hi", "-k", "abk_made_elsewhere", "-u", "al")
    assert unknown_key.code == 6, unknown_key.err  # the same mistake, the same exit code
    assert "the server refused the credential (Invalid API key)" in unknown_key.err
    assert "the server's --config" in unknown_key.err and "abk_made_elsewhere" not in unknown_key.err
    expired = await livetx_client("say", base(server), "hi", "--token", server.token(ttl=-10))
    assert expired.code == 6 and "(Token expired); make a new one" in expired.err

    nobody = await livetx_client("say", f"ws://127.0.0.1:{free_port()}", "hi", "--token", "t")
    assert nobody.code == 3 and "cannot connect to 127.0.0.1" in nobody.err

    openai.fail_status = 500
    failing = await livetx(openai_config(openai.base_url))
    failed = await livetx_client("say", base(failing), "hi", "--token", failing.token())
    assert failed.code == 1 and "livetx: server error LLM_ERROR" in failed.err

    slow = await livetx('[llm]\necho_delay = 5.0\n')
    late = await livetx_client("say", base(slow), "one two", "--token", slow.token(), "--timeout", "0.3")
    assert late.code == 4 and "no reply within 0.3 s" in late.err

    (tmp_path / "bad.wav").write_bytes(b"not audio")
    bad = await livetx_client("talk", base(server), "--wav", str(tmp_path / "bad.wav"), "--token", "t")
    assert bad.code == 2 and "--wav: not a WAV file" in bad.err
    empty = await livetx_client("talk", base(server), "--wav", "/dev/null", "--token", "t")
    assert empty.code == 2 and empty.err.endswith("livetx: --wav: not a WAV file: it is empty\n"), empty.err
    (tmp_path / "cut.wav").write_bytes(to_wav(b"\0\0" * 100)[:20])
    cut = await livetx_client("talk", base(server), "--wav", str(tmp_path / "cut.wav"), "--token", "t")
    assert cut.err.endswith("livetx: --wav: not a WAV file: it ends inside its header\n"), cut.err


@pytest_twisted.ensureDeferred
async def test_as_a_real_process(livetx: Any, tmp_path: Path) -> None:
    server = await livetx()
    env = {**os.environ, "LIVETX_TOKEN": server.token()}
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "livetx", "say", base(server), "hello", "world"], env=env, path=str(tmp_path),
    )
    assert code == 0, err
    assert out.decode() == "hello world\n" and b"client first delta" in err
    out, err, code = await getProcessOutputAndValue(sys.executable, ["-m", "livetx", "say", base(server)], env=env)
    assert code == 2 and b"livetx: say what?" in err


def test_socket_address_picks_the_endpoint_by_credential() -> None:
    assert socket_address("http://h:1", "T", None, None) == (f"ws://h:1{LIVE}?token=T", {})
    url, headers = socket_address("https://h", None, "abk_k", "bo b")
    assert (url, headers) == (f"wss://h{OPEN_API}?username=bo+b", {"X-API-Key": "abk_k"})
    assert socket_address("ws://h:1/api/unified_chat/ws?x=1", "T", None, None)[0] == \
        "ws://h:1/api/unified_chat/ws?x=1&token=T"


def test_audio_in_and_out(tmp_path: Path) -> None:
    tone = bytes(range(256)) * 50
    (tmp_path / "8k.wav").write_bytes(to_wav(tone, 8000))
    assert len(load_speech(tmp_path / "8k.wav")) == 2 * len(tone)  # 8 kHz → 16 kHz
    joined = join_chunks([to_wav(b"\1\0" * 100, 16000), to_wav(b"\2\0" * 50, 8000)])
    pcm, rate = read_wav(joined)
    assert rate == 16000 and len(pcm) == 400 and pcm[:200] == b"\1\0" * 100
    assert join_chunks([b"ID3mp3", b"more"]) == b"ID3mp3more"
    with pytest.raises(ValueError, match="cannot read"):
        load_speech(tmp_path / "missing.wav")


@pytest_twisted.ensureDeferred
async def test_talk_at_speaking_pace_sends_every_frame(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await livetx(f'[stt]\nprovider = "openai"\nbase_url = "{openai.base_url}"\n')
    pcm = bytes(range(256)) * 40  # 0.32 s at 16 kHz: 16 frames of 20 ms
    (tmp_path / "q.wav").write_bytes(to_wav(pcm))
    started = reactor.seconds()
    run = await livetx_client("talk", base(server), "-w", str(tmp_path / "q.wav"), "--realtime",
                              "-t", server.token(), "--json")
    assert run.code == 0, run.err
    assert reactor.seconds() - started >= 0.3  # paced, not sent at once
    assert read_wav(openai.requests_to("/audio/transcriptions")[-1].fields["file"])[0] == pcm
    assert next(f for f in run.frames if f["t"] == "user_msg")["data"]["text"] == openai.transcript


@pytest_twisted.ensureDeferred
async def test_play_uses_the_players_found_on_path(
    livetx: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await livetx()
    monkeypatch.setenv("PATH", str(tmp_path))  # no player at all
    run = await livetx_client("say", base(server), "hi", "--token", server.token(), "--play")
    assert run.code == 0 and "no audio player found" in run.err
    played = tmp_path / "played.wav"
    aplay = tmp_path / "aplay"  # stands in for the real player: keeps what it was given
    aplay.write_text(f'#!/bin/sh\nfor last; do :; done\n/bin/cp "$last" {played}\n')
    aplay.chmod(0o755)
    run = await livetx_client("say", base(server), "hello", "--token", server.token(), "--play")
    assert run.code == 0, run.err
    pcm, rate = read_wav(played.read_bytes())
    assert rate == 22050 and len(pcm) > 0


@pytest_twisted.ensureDeferred
async def test_talk_uploads_a_long_recording_within_the_servers_rate(
    livetx: Any, openai: Any, tmp_path: Path
) -> None:
    server = await livetx(f'[stt]\nprovider = "openai"\nbase_url = "{openai.base_url}"\n')
    silence, speech = b"\0\0" * SAMPLE_RATE, bytes(range(256)) * 125  # 1 s each
    pcm = (silence + speech) * 15  # 30 s: 1500 frames of 20 ms, past the 5 s burst at 200/s
    (tmp_path / "long.wav").write_bytes(to_wav(pcm))
    run = await livetx_client("talk", base(server), "-w", str(tmp_path / "long.wav"),
                              "-t", server.token(), "--json")
    assert run.code == 0, run.err
    assert "RATE_LIMITED" not in run.out
    assert read_wav(openai.requests_to("/audio/transcriptions")[-1].fields["file"])[0] == pcm


@pytest_twisted.ensureDeferred
async def test_an_error_outside_a_turn_ends_the_client_at_once(livetx: Any, tmp_path: Path) -> None:
    server = await livetx("[stt]\nmax_segment_seconds = 1.0\n")
    (tmp_path / "2s.wav").write_bytes(to_wav(b"\1\0" * 2 * SAMPLE_RATE))
    run = await livetx_client("talk", base(server), "-w", str(tmp_path / "2s.wav"),
                              "-t", server.token(), "--timeout", "20")
    assert run.code == 1, run.err  # not 4 after waiting out the timeout
    assert "livetx: server error AUDIO_TOO_LONG: voice segment longer than 1 s" in run.err


@pytest_twisted.ensureDeferred
async def test_wss_with_a_self_signed_certificate(livetx: Any, tmp_path: Path) -> None:
    key, cert = make_certificate(tmp_path)
    server = await livetx(listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    url = f"wss://127.0.0.1:{server.port}"
    refused = await livetx_client("say", url, "hi", "--token", server.token())
    assert refused.code == 3
    lines = refused.err.strip().splitlines()
    assert len(lines) == 1 and "the client refused the server's certificate (certificate verify failed)" \
        in lines[0] and "--cafile" in lines[0], refused.err  # not "the server closed the connection"

    trusted = await livetx_client("say", url, "hi", "--token", server.token(), "--cafile", str(cert))
    assert trusted.code == 0 and trusted.out == "hi\n", trusted.err
    assert "WARNING" not in trusted.err

    other_name = await livetx_client("say", f"wss://localhost:{server.port}", "hi", "-t", server.token(),
                                     "--cafile", str(cert))  # the certificate names 127.0.0.1 only
    assert other_name.code == 3 and "subjectAltName does not name the host" in other_name.err

    unchecked = await livetx_client("say", url, "hi", "--token", server.token(), "--insecure")
    assert unchecked.code == 0 and unchecked.out == "hi\n", unchecked.err
    assert "WARNING: --insecure" in unchecked.err

    missing = await livetx_client("say", url, "hi", "--token", "t", "--cafile", str(tmp_path / "none.pem"))
    assert missing.code == 2 and "--cafile" in missing.err
    with pytest.raises(UsageError, match="not both"):
        Options().parseOptions(["say", url, "hi", "-t", "t", "--insecure", "--cafile", str(cert)])


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_spinner_on_a_terminal_until_the_reply_streams() -> None:
    clock, err = Clock(), Terminal()
    progress = Progress(clock, err, "sent 2.0 s of speech, transcribing")
    clock.advance(0.1)
    clock.advance(0.1)
    assert err.getvalue().split(CLEAR)[1:] == [
        "| sent 2.0 s of speech, transcribing 0.0 s",
        "/ sent 2.0 s of speech, transcribing 0.1 s",
        "- sent 2.0 s of speech, transcribing 0.2 s",
    ]
    progress.frame({"t": "user_msg", "data": {"text": "hi"}})
    assert err.getvalue().endswith(CLEAR)  # wiped before "heard: ..." is printed
    clock.advance(0.1)
    assert err.getvalue().endswith("waiting for the reply 0.3 s")
    progress.frame({"t": "bot_delta_chunk", "data": {"text": "Hi"}})
    written = err.getvalue()
    clock.advance(1)
    assert written.endswith(CLEAR) and err.getvalue() == written  # stopped for good
    progress.stop()
    assert err.getvalue() == written


def test_a_slow_transcript_is_explained_once() -> None:
    clock, err = Clock(), Terminal()
    progress = Progress(clock, err, "sent 2.0 s of speech, transcribing", slow=(2.0, "the model loads"))
    clock.pump([0.1] * 19)
    assert err.getvalue().endswith("sent 2.0 s of speech, transcribing 1.9 s")
    clock.advance(0.1)
    clock.advance(0.1)
    assert err.getvalue().endswith("sent 2.0 s of speech, transcribing (the model loads) 2.1 s")
    progress.frame({"t": "user_msg", "data": {"text": "hi"}})
    clock.advance(0.1)
    assert err.getvalue().endswith("waiting for the reply 2.2 s")
    progress.stop()

    plain = io.StringIO()
    progress = Progress(clock, plain, "sent 2.0 s of speech, transcribing", slow=(2.0, "the model loads"))
    clock.pump([1.0] * 5)
    progress.stop()
    assert plain.getvalue().splitlines() == ["livetx: sent 2.0 s of speech, transcribing; waiting for the reply",
                                             "livetx: still transcribing after 2.0 s: the model loads"]
    quick = io.StringIO()
    progress = Progress(clock, quick, "sent 2.0 s of speech, transcribing", slow=(2.0, "the model loads"))
    progress.frame({"t": "user_msg", "data": {"text": "hi"}})
    clock.advance(5)
    assert "the model loads" not in quick.getvalue() and not clock.getDelayedCalls()


def test_one_plain_line_when_stderr_is_not_a_terminal() -> None:
    clock, err = Clock(), io.StringIO()
    progress = Progress(clock, err, "sent 2.0 s of speech, transcribing")
    clock.advance(5)
    progress.frame({"t": "user_msg", "data": {"text": "hi"}})
    clock.advance(5)
    progress.stop()
    assert err.getvalue() == "livetx: sent 2.0 s of speech, transcribing; waiting for the reply\n"


class Quiet:
    def frame(self, frame: dict[str, Any]) -> None:
        pass


class Sent:
    """The socket a turn driver writes to: what it sent, and when."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.frames: list[tuple[float, str]] = []

    def send(self, frame: dict[str, Any]) -> None:
        self.frames.append((self.clock.seconds(), frame["t"]))


@pytest.mark.parametrize("realtime", [True, False])
def test_client_timings_count_from_the_end_of_the_input(realtime: bool) -> None:
    clock = Clock()
    driver = _TurnDriver(clock, TurnRequest(pcm=b"\0\0" * 5120, realtime=realtime), Quiet())  # 0.32 s
    socket = Sent(clock)
    driver.opened(socket)  # type: ignore[arg-type]  # it only sends
    clock.pump([0.02] * 25)  # 0.5 s: all of it spoken by 0.32 s
    driver.received({"t": "bot_delta_chunk", "data": {"text": "Hi"}})
    ended = next(at for at, kind in socket.frames if kind == "end_speaking")
    assert ended == pytest.approx(0.32 if realtime else 0.0)
    assert driver.report.timings["first_delta"] == pytest.approx(clock.seconds() - ended)
    assert metrics_table(driver.report).startswith("metric") and "client first delta after input end" in \
        metrics_table(driver.report)
