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
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.application.service import IServiceMaker

from livetx.tap import Options

from .services import free_port, wait_for_port
from .support import connect, replied

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
def test_bad_endpoints_are_usage_errors(tmp_path: Path, bad: str) -> None:
    with pytest.raises(usage.UsageError, match="--listen"):
        Options().parseOptions(["--listen", bad, "-d", str(tmp_path)])


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
    result = subprocess.run(
        TWISTD + ["-n", "live", "--data-dir", str(tmp_path / "d"), "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("livetx: ") and message in lines[0], result.stderr


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
