"""``[store] url``: nodes sharing one real PostgreSQL, the ``livetx`` command against it, outages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from livetx.storage import key_store

from .services import PostgreSQL
from .support import connect, open_socket
from .test_live_ws import LIVE, OPEN_API, UNIFIED, openai_config
from .test_twistd import run_cli


def store_config(base_url: str, url: str) -> str:
    return openai_config(base_url, tts=False) + f'\n[store]\nurl = "{url}"\n'


async def ready(server: Any) -> tuple[int, dict[str, Any]]:
    response = await treq.get(server.url("/readyz", scheme="http"), reactor=reactor)
    return response.code, await response.json()


async def until_admitted(url: str, *, accepted: bool) -> None:
    """Wait until ``url`` is (or is no longer) let in: a revocation reaches a node's copy of the keys
    at its next refresh (every 0.5 s). The failure guarded against is never, so the bound is generous."""
    started = reactor.seconds()
    while True:
        client = await open_socket(url)
        for _ in range(10):  # a refusal (an error frame, then 1008) follows the handshake at once
            if client.close_code is not None:
                break
            await deferLater(reactor, 0.05, lambda: None)
        if (client.close_code is None) == accepted:
            await client.close_and_wait() if accepted else None
            return
        assert reactor.seconds() - started < 10, f"not {'accepted' if accepted else 'refused'} in time"
        await deferLater(reactor, 0.1, lambda: None)


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_conversations_keys_and_tokens(
    livetx: Any, openai: Any, postgres_url: str, tmp_path: Path
) -> None:
    a = await livetx(store_config(openai.base_url, postgres_url))
    b = await livetx(store_config(openai.base_url, postgres_url))
    config = str(tmp_path / "livetx.toml")  # the servers' own file; the command has a data dir of its own
    cli = ["--config", config, "--data-dir", str(tmp_path / "cli")]
    key = run_cli("keys", "create", "--scope", "chat", *cli, cwd=tmp_path)
    token = run_cli("token", "--username", "kim", *cli, cwd=tmp_path)

    openai.reply = "Noted."
    first = await connect(a.url(LIVE, token=token))  # the command's token works on every node
    await first.turn("remember 7")
    await first.close_and_wait()
    await until_admitted(b.url(OPEN_API, api_key=key, username="kim"), accepted=True)
    second = await connect(b.url(OPEN_API, api_key=key, username="kim"))  # and so does its key
    await second.turn("what was it")
    context = openai.requests_to("/chat/completions")[-1].json["messages"]
    assert [m["content"] for m in context[1:]] == ["remember 7", "Noted.", "what was it"]
    await second.close_and_wait()
    code, body = await ready(a)
    assert code == 200 and body["checks"]["store"] == {"ok": True}

    holders = [await connect(node.url(OPEN_API, api_key=key, username="kim")) for node in (a, b)]
    key_id = run_cli("keys", "list", *cli, cwd=tmp_path).split()[0]
    assert run_cli("keys", "revoke", *cli, key_id, cwd=tmp_path) == f"revoked key {key_id}"
    for holder in holders:  # sockets it opened on either node are closed, without Redis too
        await holder.closed.addTimeout(5, reactor)  # (a refresh and a revocation poll: about a second)
        assert (holder.close_code, holder.close_reason) == (1008, "API key revoked")
    for node in (a, b):
        await until_admitted(node.url(OPEN_API, api_key=key, username="kim"), accepted=False)


def test_the_default_store_never_imports_psycopg(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from twisted.internet import reactor\n"
        "from livetx.tap import Options, makeService\n"
        "options = Options()\n"
        f"options.parseOptions(['--data-dir', {str(tmp_path)!r}])\n"
        "makeService(options, reactor)\n"
        "print(sorted(m for m in sys.modules if m.startswith('psycopg')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_an_unreachable_database_stops_start_up_with_one_line(tmp_path: Path) -> None:
    from .services import free_port

    config = tmp_path / "livetx.toml"
    config.write_text(f'[store]\nurl = "postgresql://livetx:secret@127.0.0.1:{free_port()}/livetx"\n')
    out = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "live",
         "--config", str(config), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("livetx: [store] cannot connect to postgresql://127.0.0.1:")
    assert len(out.stderr.strip().splitlines()) == 1 and "secret" not in out.stderr


@pytest_twisted.ensureDeferred
async def test_while_the_database_is_away(livetx: Any, openai: Any) -> None:
    """Readiness fails, turns are still answered, nothing claims to be stored; then it all comes back."""
    database = PostgreSQL().start()
    try:
        server = await livetx(store_config(openai.base_url, database.url()))
        kim = server.token("kim")
        key = key_store(server.options["settings"], server.data_dir).create(["chat"])[1]
        await until_admitted(server.url(OPEN_API, api_key=key, username="kim"), accepted=True)
        live = await connect(server.url(LIVE, token=kim))
        chat = await connect(server.url(UNIFIED, token=kim))
        await live.turn("before")
        database.stop(remove=False)

        code, body = await ready(server)
        assert code == 503 and body["checks"]["store"]["ok"] is False
        assert [f["t"] for f in await live.turn("during", timeout=20)][-1] == "end"  # answered, not kept
        chat.send({"ct": "chat", "t": "send", "message": "keep this?"})
        events = await chat.until("end", timeout=20)
        assert "message_saved" not in [f.get("type") for f in events]
        assert [f["code"] for f in events if f.get("t") == "error"] == ["STORE_UNAVAILABLE"]
        response = await treq.get(server.url("/api/v1/chat/sessions", scheme="http", username="kim"),
                                  headers={"X-API-Key": key}, reactor=reactor)
        assert (response.code, (await response.json())["code"]) == (503, "STORE_UNAVAILABLE")

        database.start()
        chat.send({"ct": "chat", "t": "send", "message": "and now?"})
        events = await chat.until("end", timeout=20)
        assert "message_saved" in [f.get("type") for f in events]
        for client in (live, chat):
            await client.close_and_wait()
    finally:
        database.stop()


def test_the_environment_overrides_the_store_url() -> None:
    from livetx.config import ConfigError, from_mapping

    table = {"store": {"url": "postgresql://file@db/livetx"}}
    assert from_mapping(table, environ={}).store.url == "postgresql://file@db/livetx"
    assert from_mapping(table, environ={"LIVETX_STORE_URL": "postgresql://env@db/livetx"}).store.url == (
        "postgresql://env@db/livetx")
    assert from_mapping({}, environ={}).store.url is None
    assert "file@db" not in repr(from_mapping(table, environ={}))  # it may hold a password
    with pytest.raises(ConfigError, match=r"^\[store\] url must start with postgresql://"):
        from_mapping({"store": {"url": "mysql://db/livetx"}}, environ={})
