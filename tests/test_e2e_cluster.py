"""Two livetx nodes behind HAProxy, sharing one PostgreSQL and one Redis: the whole cluster contract.

Every part is real: two ``twistd live`` processes, ``haproxy`` with the
configuration docs/deployment.md gives (``balance leastconn``, ``/readyz``
health checks, a long tunnel timeout), PostgreSQL and Redis, all on loopback.
Clients only ever talk to the proxy; each node's own port is used only to
read its ``/metrics`` (which node holds how many sockets).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor

from .engines import RedisServer
from .services import binary, free_port, wait_for_port
from .support import LiveClient, connect, frame_kind, open_socket
from .test_ops import families
from .test_resume import REPLY, seqs, settle
from .test_twistd import TWISTD, run_cli

HAPROXY = """\
global
    maxconn 2000

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    retries 3
    option redispatch

frontend live
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 2
{servers}
"""


class Node:
    """One ``twistd live`` process of the cluster."""

    def __init__(self, directory: Path, config: Path, port: int) -> None:
        self.directory, self.config, self.port = directory, config, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        self.directory.mkdir(exist_ok=True)
        self.log = open(self.directory / "twistd.log", "ab")
        self.process = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "live", "--config", str(self.config), "--data-dir", str(self.directory),
                      "--listen", f"tcp:{self.port}:interface=127.0.0.1"],
            cwd=self.directory, stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.process)
        return self

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self) -> int:
        assert self.process is not None
        code = self.process.wait(30)
        self.log.close()
        return code

    def output(self) -> str:
        return (self.directory / "twistd.log").read_text()

    async def open_sockets(self) -> float:
        response = await treq.get(f"http://127.0.0.1:{self.port}/metrics", reactor=reactor)
        counted = families((await treq.content(response)).decode())
        return sum(v for (name, _), v in counted.items() if name == "livetx_open_connections")


async def wait_until(check: Any, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if await check():
            return
        await settle(0.1)
    raise AssertionError("timed out")


async def holding(nodes: list[Node], counts: list[float]) -> None:
    """Wait until the nodes hold these numbers of sockets."""
    async def now() -> bool:
        return [await n.open_sockets() for n in nodes] == counts
    await wait_until(now)


async def the_one_holding_a_socket(nodes: list[Node]) -> Node:
    counts = [await n.open_sockets() for n in nodes]
    assert sorted(counts) == [0, 1], counts
    return nodes[counts.index(1)]


@pytest_twisted.ensureDeferred
async def test_two_nodes_behind_haproxy(tmp_path: Path, postgres_url: str, redis_server: RedisServer) -> None:
    config = tmp_path / "livetx.toml"
    config.write_text(
        f'[store]\nurl = "{postgres_url}"\n\n[cluster]\nredis = "{redis_server.url}"\n\n'
        '[llm]\nprovider = "echo"\necho_delay = 0.05\n\n[tts]\nprovider = "none"\n\n'
        '[server]\nmax_connections_per_user = 3\nshutdown_grace = 10\n'
    )
    nodes = [Node(tmp_path / f"node{n}", config, free_port()) for n in (1, 2)]
    for node in nodes:
        node.start()
    proxy_port = free_port()
    servers = "\n".join(f"    server n{i} 127.0.0.1:{n.port} check" for i, n in enumerate(nodes, 1))
    (tmp_path / "haproxy.cfg").write_text(HAPROXY.format(port=proxy_port, servers=servers))
    proxy = subprocess.Popen([binary("haproxy"), "-f", str(tmp_path / "haproxy.cfg"), "-db"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clients: list[LiveClient] = []
    try:
        wait_for_port(proxy_port, proxy)
        await settle(1.0)  # both nodes pass their health checks
        cli = ["--config", str(config), "--data-dir", str(tmp_path / "cli")]
        created = subprocess.run(TWISTD[:1] + ["-m", "livetx", "keys", "create", *cli, "--scope", "chat"],
                                 capture_output=True, text=True, check=True, cwd=tmp_path).stdout.splitlines()
        key_id, key = created[0].split()[2], created[-1]
        token = run_cli("token", *cli, "--username", "tess", cwd=tmp_path)
        await settle(1.2)  # nodes see keys made in PostgreSQL within a second
        ws = f"ws://127.0.0.1:{proxy_port}"

        async def opened(url: str) -> LiveClient:
            client = await connect(url)
            clients.append(client)
            return client

        # A bind through the proxy sees a turn running on the other node.
        chat_url = f"{ws}/api/v1/live/ws?api_key={key}&username=ann&ct=chat"
        sender = await opened(chat_url)
        sender.send({"ct": "chat", "t": "send", "message": "first"})
        session_id = (await sender.until("end"))[0]["session_id"]
        watcher = await opened(chat_url)
        await holding(nodes, [1, 1])  # leastconn put them on different nodes
        watcher.send({"ct": "chat", "t": "bind", "session_id": session_id})
        await watcher.until("session_bound")
        await settle(0.2)
        sender.send({"ct": "chat", "t": "send", "message": "second", "session_id": session_id})
        seen = await watcher.until("end")
        assert "".join(f["data"] for f in seen if f.get("type") == "plain").split() == ["second"]

        # The per-user limit (3) counts the sockets on both nodes.
        live_url = f"{ws}/api/live_chat/ws?token={token}"
        for _ in range(3):
            await opened(live_url)
        await holding(nodes, [3, 2])
        fourth = await open_socket(live_url)
        await fourth.wait(lambda: fourth.close_code is not None)
        assert (fourth.close_code, fourth.close_reason) == (1008, "Too many connections for this user")

        # Revocation closes the key's sockets on both nodes.
        revoked = subprocess.run(TWISTD[:1] + ["-m", "livetx", "keys", "revoke", *cli, key_id],
                                 capture_output=True, text=True, cwd=tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        for client in (sender, watcher):
            # A wait, not a speed bound (it was 1 s, which two loaded nodes can miss): a socket left
            # open fails it. The published id and each node's half-second look at PostgreSQL both close it.
            await client.closed.addTimeout(10, reactor)
            assert (client.close_code, client.close_reason) == (1008, "API key revoked")
        for client in clients[2:]:
            await client.close_and_wait()
        clients.clear()
        await holding(nodes, [0, 0])

        # SIGTERM drains one node while the proxy sends new sockets to the other.
        talker = await opened(live_url)
        busy = await the_one_holding_a_socket(nodes)
        other = nodes[1 - nodes.index(busy)]
        talker.send({"t": "text_input", "text": REPLY})
        await talker.wait(lambda: any(frame_kind(f) == "bot_delta_chunk" for f in talker.frames))
        busy.signal(signal.SIGTERM)
        await settle(0.6)  # the proxy has seen /readyz say draining
        for _ in range(2):
            newcomer = await opened(live_url)
            assert [frame_kind(f) for f in await newcomer.turn("hi")][-1] == "end"
        assert await other.open_sockets() == 2
        finished = await talker.until("end")  # the draining node finished its turn
        words = "".join(f["data"]["text"] for f in talker.frames if f["t"] == "bot_delta_chunk")
        assert words.split() == REPLY.split() and frame_kind(finished[-1]) == "end"
        await talker.wait(lambda: talker.close_code is not None)
        assert talker.close_code == 1001
        assert busy.wait() in (0, -signal.SIGTERM) and "Traceback" not in busy.output()
        for client in clients[1:]:
            await client.close_and_wait()
        clients.clear()
        busy.start()
        await settle(1.0)  # back in the proxy's rotation

        # SIGKILL of the node running a turn: the client resumes through the proxy on the survivor.
        dropped = await opened(f"{live_url}&resume=1")
        first = await dropped.next()
        resume_id = first["session_id"]
        runner = await the_one_holding_a_socket(nodes)
        dropped.send({"t": "text_input", "text": REPLY})
        await dropped.wait(lambda: sum(frame_kind(f) == "bot_delta_chunk" for f in dropped.frames) >= 2)
        runner.signal(signal.SIGKILL)
        runner.wait()
        await dropped.wait(lambda: dropped.close_code is not None)
        before = list(dropped.frames)
        clients.clear()
        resumed = await opened(live_url)
        resumed.send({"t": "resume", "session_id": resume_id, "seq": before[-1]["seq"]})
        rest = await resumed.until("end", timeout=15)
        numbers = seqs(before) + seqs(rest)
        assert numbers == list(range(1, len(numbers) + 1))  # replayed: nothing missing, nothing twice
        assert [f.get("code") for f in rest if f["t"] == "error"] == ["INTERNAL_ERROR"]  # the turn died with its node
        more = await resumed.turn("after the crash")  # the survivor serves the session on
        assert seqs(more)[0] == numbers[-1] + 1
    finally:
        for client in clients:
            client.dropConnection(abort=True)
        proxy.terminate()
        proxy.wait(10)
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                node.signal(signal.SIGKILL)
                node.wait()
