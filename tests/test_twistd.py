"""``twistd live`` as an operator runs it: the plugin, the options, a real process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import ssl
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.application.service import IServiceMaker

from livetx.tap import Options

from .services import free_port, wait_for_port
from .support import RunningServer, connect, replied

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def test_plugin_is_found_by_twisted() -> None:
    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert makers["live"].module == "livetx.tap" or makers["live"].options is Options


def test_listen_is_repeatable_and_defaults(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["--data-dir", str(tmp_path / "d")])
    assert options["listen"] == ["tcp:6185"]
    assert (tmp_path / "d").is_dir()
    options = Options()
    options.parseOptions(["--listen", "tcp:1", "--listen", "tcp:2:interface=127.0.0.1", "-d", str(tmp_path)])
    assert options["listen"] == ["tcp:1", "tcp:2:interface=127.0.0.1"]


@pytest.mark.parametrize("bad", ["nonsense:1", "tcp:notaport", "ssl:8443:privateKey=/no/such.pem"])
def test_bad_endpoints_stop_start_up_with_one_line(
    tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        Options().parseOptions(["--listen", bad, "-d", str(tmp_path)])
    assert stopped.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"livetx: bad --listen endpoint {bad!r}: ")


def test_the_data_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIVETX_DATA_DIR", str(tmp_path / "env"))
    options = Options()
    options.parseOptions([])
    assert options["data-dir"] == tmp_path / "env" and options["data-dir"].is_dir()
    options = Options()
    options.parseOptions(["-d", "flag"])
    assert options["data-dir"] == tmp_path / "flag"  # --data-dir wins, made absolute
    assert not (tmp_path / "livetx-data").exists()


def test_help_shows_the_defaults_and_hides_the_internal_and_test_only_options(tmp_path: Path) -> None:
    help_text = " ".join(str(Options()).split())
    assert "default: tcp:6185" in help_text and "$LIVETX_DATA_DIR" in help_text and "--workers" in help_text
    assert "--adopt" not in help_text and "--metrics-dir" not in help_text and "--conformance-echo" not in help_text
    options = Options()  # still accepted
    options.parseOptions(["--conformance-echo", "--metrics-dir", str(tmp_path), "-d", str(tmp_path)])
    assert options["conformance-echo"] and options["metrics-dir"] == str(tmp_path)


def start_up_error(tmp_path: Path, *args: str, twistd: list[str] = TWISTD) -> str:
    """Run ``twistd -n live`` expecting it to refuse to start: its stderr, checked to be one line."""
    result = subprocess.run(
        twistd + ["-n", "--pidfile=", "live", "--data-dir", str(tmp_path / "d"), *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("livetx: ") and "Traceback" not in result.stdout, result
    return lines[0]


def test_a_data_dir_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    assert start_up_error(tmp_path, "--data-dir", str(tmp_path / "a-file" / "data")).startswith(
        f"livetx: cannot create the data dir '{tmp_path / 'a-file' / 'data'}': ")
    (tmp_path / "d" / "jwt_secret").mkdir(parents=True)  # where the secret should be
    assert start_up_error(tmp_path).startswith(
        f"livetx: cannot use the data dir '{tmp_path / 'd'}': {tmp_path / 'd' / 'jwt_secret'}: ")


def test_a_port_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        assert start_up_error(tmp_path, "--listen", endpoint) == \
            f"livetx: cannot listen on {endpoint}: [Errno 98] Address already in use"
    assert start_up_error(tmp_path, "--listen", "tcp:99999").startswith(
        "livetx: cannot listen on tcp:99999: ")


@pytest.mark.parametrize(
    "config, message",
    [
        ("[nope]\n", "unknown section [nope]"),
        ("[llm]\ncolour = 1\n", "[llm] unknown key 'colour'"),
        ('[llm]\ntimeout = "soon"\n', "[llm] timeout must be a number, got 'soon'"),
        ('[tts]\nprovider = "robot"\n', "[tts] provider must be one of"),
        ("[llm\n", "is not valid TOML"),
        ('[tts]\nprovider = "piper"\n', "[tts] model must name a Piper voice"),
        ('[stt]\nprovider = "whisper"\nmodel = "/no/model"\n', "[stt] model '/no/model' does not exist"),
        ('[stt]\nprovider = "pocketsphinx"\ngrammar = "/no/such/grammar.jsgf"\n',
         "[stt] grammar '/no/such/grammar.jsgf' does not exist"),
        ('[stt]\nkeywords = ["lights on"]\n', '[stt] keywords is for PocketSphinx: add provider = "pocketsphinx"'),
        ('[tools]\nenabled = ["clock", "lights"]\n', "[tools] unknown tool 'lights'; available: calculator, clock"),
    ],
)
def test_config_errors_stop_start_up_with_one_line(tmp_path: Path, config: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config)
    assert message in start_up_error(tmp_path, "--config", str(path))


@pytest.mark.parametrize(
    "config, missing, message",
    [
        ('[cluster]\nredis = "redis://127.0.0.1:1/0"\n', "txredisapi",
         "livetx: [cluster] redis needs: pip install 'livetx[cluster]'"),
        ('[store]\nurl = "postgresql://nobody@127.0.0.1:1/none"\n', "psycopg_pool",
         "livetx: [store] url needs: pip install 'livetx[postgres]'"),
    ],
)
def test_a_setting_whose_extra_is_missing_names_the_extra(
    tmp_path: Path, config: str, missing: str, message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(config)
    # As without the extra: a None in sys.modules makes its import fail.
    without = [sys.executable, "-c", f"import sys; sys.modules[{missing!r}] = None; "
               "from twisted.scripts.twistd import run; run()"]
    assert start_up_error(tmp_path, "--config", str(path), twistd=without) == message


def run_cli(*args: str, cwd: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "livetx", *args], capture_output=True, text=True, check=True, cwd=cwd, timeout=60
    )
    return out.stdout.strip().splitlines()[-1]


@pytest_twisted.ensureDeferred
async def test_real_twistd_process_serves_a_turn_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    process = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", "live", "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(data)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, process)
        token = run_cli("token", "--data-dir", str(data), "--username", "carol", cwd=tmp_path)
        key = run_cli("keys", "create", "--data-dir", str(data), "--scope", "chat", cwd=tmp_path)
        assert key.startswith("abk_")
        for url in (
            f"ws://127.0.0.1:{port}/api/live_chat/ws?token={token}",
            f"ws://127.0.0.1:{port}/api/v1/live/ws?api_key={key}&username=carol",
        ):
            client = await connect(url)
            frames = await client.turn("over the wire")
            assert replied(frames)
            await client.close_and_wait()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    # twistd shuts down cleanly, then re-raises SIGTERM so its status tells why it stopped.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Server Shut Down." in output
    assert token not in output and key not in output  # secrets never reach the log
    assert "Traceback" not in output


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the cryptography package."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest_twisted.ensureDeferred
async def test_ssl_endpoint_serves_wss(tmp_path: Path, livetx: Any) -> None:
    key_path, cert_path = make_certificate(tmp_path)
    server = await livetx(listen=f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}")
    trust = ssl.Certificate.loadPEM(cert_path.read_bytes())
    tls = ssl.optionsForClientTLS("127.0.0.1", trustRoot=trust)
    client = await connect(server.url("/api/live_chat/ws", scheme="wss", token=server.token()), tls=tls)
    frames = await client.turn("secure hello")
    assert replied(frames)
    await client.close_and_wait()


def test_a_hosted_model_without_a_key_is_warned_about_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIVETX_LLM_API_KEY", raising=False)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        RunningServer(tmp_path / "d", '[llm]\nprovider = "openai"\n')
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn and "[llm]" in formatEvent(e)]
    assert len(warned) == 1 and warned[0].startswith("[llm] provider 'openai' at https://api.openai.com/v1 has no")
