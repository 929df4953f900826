"""``livetx dev-cluster``: a real PostgreSQL and Redis, used by real ``livetx`` commands, stopped by signals."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Iterator

import pytest
import redis

from livetx.cli import main


@pytest.fixture
def directory() -> Iterator[Path]:
    """Under /tmp, not pytest's own (mode 0700) temporary tree: as root PostgreSQL runs as postgres."""
    parent = Path(tempfile.mkdtemp(prefix="livetx-dev-"))
    parent.chmod(0o755)
    yield parent / "cluster"
    shutil.rmtree(parent, ignore_errors=True)


def start(directory: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """Run the command until it has printed its config: the process and what it printed."""
    process = subprocess.Popen([sys.executable, "-m", "livetx", "dev-cluster", str(directory)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("  livetx keys create"):
        line = process.stdout.readline()
        assert line, f"exited: {process.wait(timeout=30)} {process.stderr.read() if process.stderr else ''}"
        lines.append(line.rstrip("\n"))
    return process, lines


def stop(process: subprocess.Popen[str], signum: int) -> str:
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out


def refused(url: str) -> bool:
    host, port = url.split("@")[-1].split("/")[2 if url.startswith("redis") else 0].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def cli(*args: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_serves_the_printed_config_and_stops_on_sigterm_and_on_ctrl_c(
    directory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    process, printed = start(directory)
    config = directory / "livetx.toml"
    settings = tomllib.loads(config.read_text())
    store, redis_url = settings["store"]["url"], settings["cluster"]["redis"]
    assert f'url = "{store}"' in printed and f'redis = "{redis_url}"' in printed
    assert redis.Redis.from_url(redis_url).ping()
    key = cli("keys", "create", "--config", str(config), "--scope", "chat", "--name", "tried", capsys=capsys)
    key_id = key.split()[2]
    assert "Stopped PostgreSQL and Redis" in stop(process, signal.SIGTERM)
    assert refused(store) and refused(redis_url)

    process, _ = start(directory)  # the database stays in the directory; Ctrl-C stops it
    listing = cli("keys", "list", "--config", str(config), capsys=capsys)
    assert key_id in listing and "tried" in listing
    store = tomllib.loads(config.read_text())["store"]["url"]
    stop(process, signal.SIGINT)
    assert refused(store)


def test_a_server_that_stops_on_its_own_stops_the_command_with_one_line(directory: Path) -> None:
    process, _ = start(directory)
    store = tomllib.loads((directory / "livetx.toml").read_text())["store"]["url"]
    (redis_server,) = [int(pid) for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
    os.kill(redis_server, signal.SIGKILL)  # PostgreSQL runs apart (pg_ctl), Redis is its child
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and err == f"livetx: dev-cluster: Redis stopped on its own; see the log in {directory}\n"
    assert refused(store)  # and PostgreSQL was stopped with it


def dev_cluster_error(directory: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "livetx", "dev-cluster", str(directory)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result
    assert result.stderr.startswith("livetx: dev-cluster: ")
    return result.stderr


def test_a_directory_it_cannot_use_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    assert "Not a directory" in dev_cluster_error(tmp_path / "a-file" / "c")
    if os.geteuid() == 0:  # pytest's directory is root's alone (0700): postgres cannot enter it
        assert "who must be able to enter" in dev_cluster_error(tmp_path / "c")
