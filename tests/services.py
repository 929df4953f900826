"""Real outside services for the tests: PostgreSQL, Redis and HAProxy, on loopback.

Each server is started once per test run in a temporary directory on a free
port, and stopped at the end. The binaries come from Debian's packages (the
README's test command installs them); PostgreSQL's are found on PATH or in
``/usr/lib/postgresql/*/bin``. PostgreSQL refuses to run as root, so under
root it runs as the ``postgres`` user when there is one, else ``nobody``.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def binary(name: str, *extra_dirs: str) -> str:
    """The path of a server binary, or a test failure saying how to install it."""
    found = shutil.which(name)
    for pattern in extra_dirs:
        if found:
            break
        found = next((p for p in sorted(glob.glob(os.path.join(pattern, name)), reverse=True)), None)
    if not found:
        pytest.fail(f"{name} is not installed: the README's test command installs it with apt-get")
    return found


def _postgres_bin(name: str) -> str:
    return binary(name, "/usr/lib/postgresql/*/bin")


class PostgreSQL:
    """A throw-away cluster; :meth:`database` gives each test an empty database."""

    def __init__(self, durable: bool = False) -> None:
        #: Tests skip flushing to disk; a benchmark keeps PostgreSQL's defaults.
        self.durable = durable
        self.dir = Path(tempfile.mkdtemp(prefix="livetx-pg-"))
        self.port = free_port()
        self._numbers = itertools.count()
        self._run_as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            user = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(self.dir, user)
            self._run_as = ["runuser", "-u", user, "--"]

    def _command(self, name: str, *args: str, check: bool = True) -> None:
        subprocess.run(  # from its own directory: the user it runs as may not enter ours
            [*self._run_as, _postgres_bin(name), *args], check=check, cwd=self.dir,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def start(self) -> PostgreSQL:
        """Create the cluster the first time; start (or restart) it on the same port."""
        data = str(self.dir / "data")
        if not (self.dir / "data").exists():
            self._command("initdb", "-D", data, "-A", "trust", "-U", "livetx", "-E", "UTF8", "--no-sync")
        options = f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1"
        if not self.durable:
            options += " -c fsync=off"
        self._command("pg_ctl", "start", "-w", "-D", data, "-l", str(self.dir / "log"), "-o", options)
        return self

    def stop(self, remove: bool = True) -> None:
        """Stop at once (as a crash would); ``remove=False`` keeps the data for :meth:`start`."""
        try:
            # Not running any more (a test stopped it) is fine too.
            self._command("pg_ctl", "stop", "-m", "immediate", "-D", str(self.dir / "data"), check=False)
        finally:
            if remove:
                shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://livetx@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database's URL."""
        import psycopg

        name = f"test{next(self._numbers)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgreSQL]:
    """One PostgreSQL server for the whole run."""
    server = PostgreSQL().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgresql: PostgreSQL) -> str:
    """An empty database of its own for one test."""
    return postgresql.database()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One Redis server for the whole run, keeping nothing on disk."""
    port = free_port()
    process = subprocess.Popen(
        [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def haproxy() -> str:
    """The haproxy binary."""
    return binary("haproxy")
