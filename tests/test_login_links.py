"""One-time login links: made at start-up or by ``livetx open``, redeemed once, for the page.

The link checks run against a fake clock (no waiting for expiry); the route
and the start-up line against a real server and a real ``twistd`` process.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from livetx.auth.login_links import (
    DEFAULT_PAGE, EXPIRED, INVALID, LINK_SECONDS, USED, USED_FILE, FileUsedLinks, LoginLinks, fingerprint,
    issue_link_code, link_url, page_address,
)
from livetx import storage
from livetx.auth.tokens import AuthFailure, issue_token, verify_token
from livetx.tap import DEFAULT_LISTEN

from .services import free_port, wait_for_port
from .support import connect, replied
from .engines import RedisServer
from .test_twistd import TWISTD, run_cli
from .test_workers import two_workers

SECRET = "s" * 64


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def refusal(links: LoginLinks, code: str) -> str:
    """Why ``links`` refuses ``code`` (the test fails if it does not)."""
    with pytest.raises(AuthFailure) as refused:
        await links.redeem(code)
    return refused.value.reason


def codes(links: LoginLinks, clock: Clock) -> list[Callable[[str], str]]:
    """Both kinds of link: the server's own (in memory) and livetx open's (a JWT)."""
    return [links.issue, lambda username: issue_link_code(SECRET, username, now=clock.now)]


def links_in(directory: Path, clock: Clock, **record: Any) -> LoginLinks:
    """Links whose used ones are recorded in ``directory``, as a server without Redis keeps them."""
    return LoginLinks(SECRET, FileUsedLinks(directory / USED_FILE, reactor, **record), now=clock)


@pytest.mark.parametrize("kind", ["server's", "livetx open's"])
@pytest_twisted.ensureDeferred
async def test_a_link_signs_in_once_and_is_refused_after(kind: str, tmp_path: Path) -> None:
    clock = Clock()
    links = links_in(tmp_path, clock)
    code = codes(links, clock)[kind != "server's"]("dora")
    username, token = await links.redeem(code)
    assert username == "dora"
    # The token is an ordinary session token for the sockets, valid for the tab's session.
    assert verify_token(SECRET, token) == "dora"
    assert await refusal(links, code) == USED


@pytest.mark.parametrize("kind", ["server's", "livetx open's"])
@pytest_twisted.ensureDeferred
async def test_a_link_expires_in_minutes(kind: str, tmp_path: Path) -> None:
    clock = Clock()
    links = links_in(tmp_path, clock)
    code = codes(links, clock)[kind != "server's"]("web")
    clock.now += LINK_SECONDS + 1
    assert await refusal(links, code) == EXPIRED


@pytest_twisted.ensureDeferred
async def test_a_link_is_used_once_by_every_process_that_shares_the_data_dir(tmp_path: Path) -> None:
    clock = Clock()
    code = issue_link_code(SECRET, "dora", now=clock.now)
    # Two servers on one data dir (--workers, or the next run of the server): each its own record's reader.
    first, second = links_in(tmp_path, clock), links_in(tmp_path, clock)
    assert (await first.redeem(code))[0] == "dora"
    assert await refusal(second, code) == USED
    assert await refusal(links_in(tmp_path, clock), code) == USED  # a restart forgets nothing
    assert (tmp_path / USED_FILE).stat().st_mode & 0o777 == 0o600


@pytest_twisted.ensureDeferred
async def test_used_links_are_forgotten_only_once_they_expired(tmp_path: Path) -> None:
    clock = Clock()
    links = links_in(tmp_path, clock, max_remembered=2)
    first, second = issue_link_code(SECRET, now=clock.now), issue_link_code(SECRET, now=clock.now + 100)
    await links.redeem(first)
    await links.redeem(second)
    refused = await refusal(links, issue_link_code(SECRET, now=clock.now))
    assert refused == "Too many login links in use; try again in a few minutes"  # both still count
    clock.now += LINK_SECONDS - 1
    assert await refusal(links, first) == USED  # not expired yet, so still remembered
    clock.now += 2  # the first is gone from the record; the second is still there
    assert (await links.redeem(issue_link_code(SECRET, now=clock.now)))[0] == "web"
    with sqlite3.connect(tmp_path / USED_FILE) as kept:
        assert kept.execute("SELECT count(*) FROM used").fetchone()[0] == 2
    assert await refusal(links, first) == EXPIRED  # forgotten, as it could never sign in again


@pytest_twisted.ensureDeferred
async def test_the_start_up_link_is_this_process_own(tmp_path: Path) -> None:
    clock = Clock()
    links = links_in(tmp_path, clock)
    code = links.issue()
    assert await refusal(links_in(tmp_path, clock), code) == INVALID  # another process never made it
    await links.redeem(code)
    clock.now += LINK_SECONDS + 1
    assert await refusal(links, code) == USED
    assert await refusal(links, code) == INVALID  # forgotten once expired


@pytest_twisted.ensureDeferred
async def test_a_link_is_no_token_and_a_token_is_no_link(tmp_path: Path) -> None:
    code = issue_link_code(SECRET, "dora")
    with pytest.raises(AuthFailure):
        verify_token(SECRET, code)  # signed with a key derived from the secret, not the secret
    links = links_in(tmp_path, Clock())
    for wrong in (issue_token(SECRET, "dora", 60), issue_link_code("another secret" * 4, "dora"), "junk"):
        assert await refusal(links, wrong) == INVALID


def test_the_page_address_of_a_listen_endpoint() -> None:
    assert page_address(DEFAULT_LISTEN) == DEFAULT_PAGE == "http://127.0.0.1:6185/"
    assert page_address("tcp:port=8080:interface=10.0.0.2") == "http://10.0.0.2:8080/"
    assert page_address("ssl:8443:privateKey=k.pem:certKey=c.pem") == "https://127.0.0.1:8443/"
    assert page_address("tcp6:6185:interface=\\:\\:1") == "http://[::1]:6185/"
    assert page_address("unix:/tmp/live.sock") is None and page_address("tcp:0") is None
    code = issue_link_code(SECRET)
    assert parse_qs(urlparse(link_url("http://h:1/", code)).query)["login"] == [code]


async def login(port: int, code: Any, **request: Any) -> tuple[int, dict[str, Any]]:
    response = await treq.post(f"http://127.0.0.1:{port}/api/v1/login", json.dumps({"login": code}).encode(),
                               headers={"content-type": "application/json"}, reactor=reactor, **request)
    return response.code, json.loads(await treq.content(response))


@pytest_twisted.ensureDeferred
async def test_the_route_redeems_a_link_from_livetx_open_once(livetx: Any, tmp_path: Path) -> None:
    server = await livetx()
    link = run_cli("open", "--data-dir", str(server.data_dir), "--username", "erin",
                   "--url", server.url("/", scheme="http"), cwd=tmp_path)
    assert link.startswith(server.url("/", scheme="http") + "?login=")
    code = parse_qs(urlparse(link).query)["login"][0]
    status, body = await login(server.port, code)
    assert status == 200 and body["username"] == "erin"
    client = await connect(server.url("/api/live_chat/ws", token=body["token"]))
    assert replied(await client.turn("signed in by a link"))
    await client.close_and_wait()

    status, body = await login(server.port, code)
    assert (status, body["code"], body["message"]) == (401, "UNAUTHORIZED", USED)
    assert (await login(server.port, 42))[0] == 400
    assert await login(server.port, "x" * 5000) == (413, {"status": "error", "code": "TOO_LARGE",
                                                          "message": "the body is limited to 4096 bytes here"})
    response = await treq.get(server.url("/api/v1/login", scheme="http"), reactor=reactor)
    assert response.code == 405
    # livetx token --link is the same command.
    assert "?login=" in run_cli("token", "--link", "--data-dir", str(server.data_dir), cwd=tmp_path)


@pytest_twisted.ensureDeferred
async def test_the_start_up_log_prints_a_link_never_logged_in_full_again(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", "live", "--listen", f"tcp:{port}:interface=127.0.0.1",
                  "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, process)
        assert process.stdout is not None
        line = next(line for line in process.stdout if "?login=" in line)
        link = line.split()[line.split().index("(livetx") - 1]
        assert link.startswith(f"http://127.0.0.1:{port}/?login=")
        code = parse_qs(urlparse(link).query)["login"][0]
        assert (await login(port, code))[0] == 200
        assert (await login(port, code))[0] == 401
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert code not in output  # the start-up line was read above: nothing after it names the link
    assert output.count(fingerprint(code)) == 2  # signed in, then refused


@pytest_twisted.ensureDeferred
async def test_refused_links_count_as_failed_sign_ins(livetx: Any) -> None:
    server = await livetx("[server]\nfailed_auth_per_minute = 2\n")
    assert [(await login(server.port, guess))[0] for guess in ("guess1", "guess2")] == [401, 401]
    code = issue_link_code(storage.jwt_secret(server.options["settings"], server.data_dir))
    status, body = await login(server.port, code)  # even a good link, until the minute is over
    assert (status, body["code"]) == (429, "RATE_LIMITED")


@pytest_twisted.ensureDeferred
async def test_a_link_signs_in_once_across_two_workers(tmp_path: Path, redis_server: RedisServer) -> None:
    # No failed-sign-in limit: the refusals below would reach it.
    process, port, _ = await two_workers(tmp_path, redis_server, config_extra="[server]\nfailed_auth_per_minute = 0\n")
    try:
        link = run_cli("open", "--config", str(tmp_path / "livetx.toml"), "--data-dir", str(tmp_path / "data"),
                       "--url", f"http://127.0.0.1:{port}/", cwd=tmp_path)
        code = parse_qs(urlparse(link).query)["login"][0]
        # A new connection each time: the kernel hashes each to one worker's socket.
        fresh = HTTPConnectionPool(reactor, persistent=False)
        statuses = [(await login(port, code, pool=fresh))[0] for _ in range(16)]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert sorted(statuses) == [200] + [401] * 15
    said = re.findall(rf"\[worker-(\d) [^\]]*\] (login link {fingerprint(code)} signed in|refused a login link used before)",
                      output)
    signed_in = [worker for worker, line in said if "signed in" in line]
    # Both workers refused it, the one that never saw it redeemed too (15 tries all on one worker: 1 in 32,768).
    assert len(signed_in) == 1 and {worker for worker, line in said if "refused" in line} == {"0", "1"}, said


@pytest_twisted.ensureDeferred
async def test_a_link_is_refused_not_let_in_while_the_shared_record_is_away(livetx: Any) -> None:
    server = await livetx('[cluster]\nredis = "redis://127.0.0.1:1/0"\n')  # nothing listens there
    code = issue_link_code(storage.jwt_secret(server.options["settings"], server.data_dir))
    assert await login(server.port, code) == (503, {
        "status": "error", "code": "PROCESSING_ERROR",
        "message": "login links cannot be checked right now; try again, or paste a token"})
