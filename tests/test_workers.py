"""``twistd live --workers N``: shared sockets, restarts, draining, and one ``/metrics`` for all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.scripts.twistd import ServerOptions

from livetx.cluster.worker_metrics import SharedMetrics
from livetx.cluster.workers import WorkerLogs, reuseport_sockets
from livetx.metrics import ServerMetrics

from .engines import RedisServer

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from workers_bench import split, tcp_sockets  # noqa: E402 (the benchmark's own count of the split)
from .support import connect, replied
from .test_resume import settle
from .test_live_ws import eventually
from .test_ops import families
from .test_twistd import TWISTD, free_port, make_certificate, run_cli, wait_for_port


def test_more_than_one_worker_needs_redis(tmp_path: Path) -> None:
    result = subprocess.run(
        TWISTD + ["-n", "--pidfile=", "live", "--workers", "2", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "livetx: --workers 2 needs [cluster] redis in the config file: "
        "the workers share limits, bound sessions and resume through it")


def test_workers_cannot_share_a_tls_endpoint(tmp_path: Path) -> None:
    config = tmp_path / "livetx.toml"
    config.write_text('[cluster]\nredis = "redis://127.0.0.1:1/0"\n')
    key, cert = make_certificate(tmp_path)
    result = subprocess.run(
        TWISTD + ["-n", "--pidfile=", "live", "--workers", "2", "--config", str(config),
                  "--listen", f"ssl:0:privateKey={key}:certKey={cert}", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("livetx: --workers cannot share --listen 'ssl:0:"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_scrape_adds_up_every_worker_once(tmp_path: Path) -> None:
    other = ServerMetrics()
    other.opened("/ws", "live", "ann")
    other.refused_at("/ws")
    (tmp_path / "worker-1.json").write_text(json.dumps(other.snapshot()))
    (tmp_path / "dead-2.json").write_text(json.dumps(other.snapshot()))  # died: its gauge goes
    mine = ServerMetrics()
    mine.opened("/ws", "live", "bob")
    shared = SharedMetrics(mine, tmp_path, Clock())
    text = _exposition(mine)
    assert text[("livetx_connections_total", (("endpoint", "/ws"), ("mode", "live")))] == 3
    assert text[("livetx_connections_refused_total", (("endpoint", "/ws"),))] == 2
    assert text[("livetx_open_connections", (("endpoint", "/ws"),))] == 2
    assert (tmp_path / f"worker-{os.getpid()}.json").exists()
    shared.stopService()


def _exposition(metrics: ServerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    return families(generate_latest(metrics.registry).decode())


def children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


async def two_workers(
    tmp_path: Path, redis: RedisServer, *twistd: str, config_extra: str = ""
) -> tuple[subprocess.Popen[str], int, str]:
    """``twistd [twistd options] live --workers 2`` on a free port, both workers up:
    the supervisor, the port and a user's socket URL."""
    port = free_port()
    data = tmp_path / "data"
    config = tmp_path / "livetx.toml"
    config.write_text(f'[cluster]\nredis = "{redis.url}"\n{config_extra}')
    process = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", *twistd, "live", "--workers", "2", "--config", str(config),
                  "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(data)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, process)
        await eventually(lambda: len(children(process.pid)) == 2, timeout=30)
        token = run_cli("token", "--data-dir", str(data), "--username", "carol", cwd=tmp_path)
    except BaseException:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
        raise
    return process, port, f"ws://127.0.0.1:{port}/api/live_chat/ws?token={token}"


@pytest_twisted.ensureDeferred
async def test_workers_share_the_port_restart_and_drain(tmp_path: Path, redis_server: RedisServer) -> None:
    process, port, url = await two_workers(tmp_path, redis_server)
    token = url.rpartition("=")[2]
    try:
        for _ in range(4):
            client = await connect(url)
            assert replied(await client.turn("hello workers"))
            await client.close_and_wait()
        await settle(1.5)  # every worker has written its counts since

        async def connections() -> float:
            response = await treq.get(f"http://127.0.0.1:{port}/metrics", reactor=reactor)
            counted = families((await treq.content(response)).decode())
            return counted[("livetx_connections_total", (("endpoint", "/api/live_chat/ws"), ("mode", "live")))]

        assert [await connections() for _ in range(4)] == [4.0] * 4  # whichever worker answers

        victim = min(children(process.pid))
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: len(children(process.pid) - {victim}) == 2, timeout=30)
        for _ in range(2):  # the port never stopped serving
            client = await connect(url)
            assert replied(await client.turn("still here"))
            await client.close_and_wait()
        await settle(1.5)
        assert await connections() == 6.0  # the dead worker's count stays in the sum
    finally:
        workers = children(process.pid)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode in (0, -signal.SIGTERM), output
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # the supervisor waited for them
    assert "Traceback" not in output and token not in output
    assert "] Started worker 1" in output and "[worker-0 " in output and "[worker-1 " in output  # whose line


@pytest_twisted.ensureDeferred
async def test_each_worker_accepts_on_its_own_socket_and_gets_its_share(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SO_REUSEPORT: the kernel spreads connections; one shared socket split 20 as 20/0, 19/1, 13/7 (27.10)."""
    process, port, url = await two_workers(tmp_path, redis_server,
                                           config_extra="[server]\nmax_connections_per_user = 0\n")
    try:
        listening = [tcp_sockets(pid, port)["listening"] for pid in sorted(children(process.pid))]
        assert [len(sockets) for sockets in listening] == [1, 1] and listening[0] != listening[1]
        clients = [await connect(url) for _ in range(40)]
        shares = split(process.pid, port)
        # A hash of the client's port: each worker's share is binomial; below 8 of 40 is 1 in 3,000.
        assert sum(shares) == 40 and min(shares) >= 8, shares
        for client in clients:
            await client.close_and_wait()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode in (0, -signal.SIGTERM), output


@pytest.mark.parametrize(("twistd", "worker"), [
    (["-n"], []),  # the inherited stdout
    (["-n", "--logfile=-"], ["--logfile=-"]),
    (["--logfile", "/var/log/livetx.log"], ["--logfile", "/var/log/livetx.worker-1.log"]),
    ([], ["--logfile", "{cwd}/twistd.worker-1.log"]),  # a daemon's default file, not the lost stdout
    (["--syslog", "--prefix", "lx"], ["--syslog", "--prefix", "lx"]),
    (["-n", "--logger", "livetx.logs.json_observer", "--logfile", "x.log"], ["--logger", "livetx.logs.json_observer"]),
])
def test_workers_log_as_the_supervisor_was_told(twistd: list[str], worker: list[str]) -> None:
    options = ServerOptions()
    options.parseOptions(twistd)
    assert WorkerLogs.like(options).argv(1) == [arg.format(cwd=os.getcwd()) for arg in worker]


@pytest_twisted.ensureDeferred
async def test_json_logs_stay_json_from_every_worker(tmp_path: Path, redis_server: RedisServer) -> None:
    """docs/deployment.md's JSON logging with --workers: the workers' turn lines too."""
    process, _, url = await two_workers(tmp_path, redis_server, "--logger", "livetx.logs.json_observer")
    workers = children(process.pid)
    try:
        client = await connect(url)
        assert replied(await client.turn("hello workers"))
        await client.close_and_wait()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    events = [json.loads(line) for line in output.splitlines()]  # every line, the workers' too
    assert [e for e in events if e.get("livetx_event") == "turn"], output
    assert {e.get("pid") for e in events if "Started worker" in e["message"]} == workers
    assert {e.get("worker") for e in events if e.get("livetx_event") == "turn"} <= {0, 1}  # whose turn


def test_the_sockets_handed_to_workers_do_not_block() -> None:
    """Twisted's adoptStreamPort requires a non-blocking socket: its port accepts until told there is
    no more, and on a blocking socket that last accept waits for the next connection, the reactor with it
    (SIGTERM too: Python retries the call). The benchmarks' floor workers, which accept as Twisted does,
    hung so on livetx's sockets."""
    port = free_port()
    held = reuseport_sockets(IPv4Address("TCP", "127.0.0.1", port), "inet", 8, 2)
    try:
        assert [os.get_blocking(h.fd) for h in held] == [False, False]
        with pytest.raises(BlockingIOError):  # no connection waits: said at once
            socket.socket(fileno=os.dup(held[0].fd)).accept()
    finally:
        for h in held:
            h.close()
