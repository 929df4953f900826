"""Real outside services for the tests: PostgreSQL, Redis and HAProxy, on loopback.

Each server is started once per test run in a temporary directory on a free
port, and stopped at the end, by the same code as ``livetx dev-cluster``
(:mod:`livetx.cluster.local`, which says how they are found and run). The
binaries come from Debian's packages (the README's test command installs
them).
"""

from __future__ import annotations

from typing import Iterator, NoReturn, TypeVar

import pytest

from livetx.cluster import local
from livetx.cluster.local import PostgreSQL, Redis, free_port, wait_for_port

__all__ = ["PostgreSQL", "binary", "free_port", "wait_for_port"]


Server = TypeVar("Server", PostgreSQL, Redis)


def _missing(e: local.Missing) -> NoReturn:
    pytest.fail(f"{e}: the README's test command installs it with apt-get")


def binary(name: str, *extra_dirs: str) -> str:
    """The path of a server binary, or a test failure saying how to install it."""
    try:
        return local.binary(name, *extra_dirs)
    except local.Missing as e:
        _missing(e)


def started(server: Server) -> Server:
    try:
        return server.start()
    except local.Missing as e:
        _missing(e)


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgreSQL]:
    """One PostgreSQL server for the whole run."""
    server = started(PostgreSQL())
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgresql: PostgreSQL) -> str:
    """An empty database of its own for one test."""
    return postgresql.database()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One Redis server for the whole run, keeping nothing on disk."""
    server = started(Redis())
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def haproxy() -> str:
    """The haproxy binary."""
    return binary("haproxy")
