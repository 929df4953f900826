"""Fixtures that start real servers on loopback ports and stop them cleanly."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor

from livetx.testing.openai_server import start as start_openai

from .checkout import CHECKOUT, foreign_modules, with_checkout
from .engines import RedisServer
from .services import haproxy, postgres_url, postgresql, redis_url  # noqa: F401 (fixtures)
from .support import RunningServer


def pytest_configure(config: pytest.Config) -> None:
    """Put the checkout on every child's ``PYTHONPATH``, and stop at once if a child would still miss it."""
    os.environ.update(with_checkout(os.environ))
    with tempfile.TemporaryDirectory() as elsewhere:  # not the checkout, as children run in tmp_path
        foreign = foreign_modules(os.environ, Path(elsewhere))
    if foreign:
        raise pytest.UsageError(f"child processes would not run the checkout {CHECKOUT}: {', '.join(foreign)}")


@pytest_twisted.async_yield_fixture
async def openai(tmp_path: Path) -> AsyncIterator[Any]:
    """An in-process OpenAI-compatible service speaking the real wire format."""
    fake, port = start_openai(reactor)
    fake.base_url = f"http://127.0.0.1:{port.getHost().port}/v1"
    yield fake
    await port.stopListening()


@pytest_twisted.async_yield_fixture
async def livetx(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[RunningServer]]]:
    """``await livetx(config_text)`` starts a server; all are stopped afterwards."""
    servers: list[RunningServer] = []

    async def start(config_text: str | None = None, **kwargs: Any) -> RunningServer:
        data_dir = tmp_path / f"data{len(servers)}"
        server = RunningServer(data_dir, config_text, **kwargs)
        servers.append(server)
        return await server.start()

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a loopback port, for this test only."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()
