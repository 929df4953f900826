"""A PostgreSQL and a Redis of one's own on loopback: for ``livetx dev-cluster`` and the tests.

Both run from Debian's packages (``postgresql``, ``redis-server``) in a
directory, on free loopback ports, with nothing shared with a system
cluster: trying ``[store] url`` and ``[cluster] redis`` on one machine needs
neither sudo nor a running database. PostgreSQL's binaries are found on PATH
or in ``/usr/lib/postgresql/*/bin``. PostgreSQL refuses to run as root, so
under root it runs as the ``postgres`` user when there is one, else
``nobody``; that user must be able to enter the directory.

The tests start the same servers with this code (``tests/services.py``), so
the command is what the suite exercises on every run.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TextIO

#: How often ``livetx dev-cluster`` checks that both servers still run.
WATCH_SECONDS = 1.0
#: The database ``livetx dev-cluster`` makes for the server; the tests make their own.
DATABASE = "livetx"
#: The cluster's superuser, who needs no password on loopback (``-A trust``).
USER = "livetx"
INSTALL = "apt-get install postgresql redis-server"


class Missing(Exception):
    """A server binary is not installed; the message says which and how to install it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    """Return once something accepts on ``port``; raise if ``process`` exits or ``timeout`` passes first."""
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
    """The path of a server binary, or :class:`Missing`."""
    found = shutil.which(name)
    for pattern in extra_dirs:
        if found:
            break
        found = next((p for p in sorted(glob.glob(os.path.join(pattern, name)), reverse=True)), None)
    if not found:
        raise Missing(f"{name} is not installed ({INSTALL})")
    return found


def _postgres_bin(name: str) -> str:
    return binary(name, "/usr/lib/postgresql/*/bin")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


class PostgreSQL:
    """A cluster in a directory of its own; :meth:`database` makes an empty database in it."""

    def __init__(self, directory: Path | None = None, durable: bool = False) -> None:
        #: Tests skip flushing to disk; a benchmark and ``dev-cluster`` keep PostgreSQL's defaults.
        self.durable = durable
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="livetx-pg-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.port = free_port()
        self._numbers = itertools.count()
        self._run_as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            user = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(self.dir, user)
            self._run_as = ["runuser", "-u", user, "--"]

    def _command(self, name: str, *args: str, check: bool = True) -> None:
        result = subprocess.run(  # from its own directory: the user it runs as may not enter ours
            [*self._run_as, _postgres_bin(name), *args], cwd=self.dir,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if check and result.returncode:
            lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
            hint = ""
            if self._run_as and "Permission denied" in lines[-1]:
                hint = f" (as root PostgreSQL runs as {self._run_as[2]}, who must be able to enter {self.dir})"
            raise RuntimeError(f"{name} failed: {lines[-1]}{hint}")

    def start(self) -> PostgreSQL:
        """Create the cluster the first time; start (or restart) it on the same port."""
        data = str(self.dir / "data")
        if not (self.dir / "data").exists():
            self._command("initdb", "-D", data, "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync")
        options = f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1"
        if not self.durable:
            options += " -c fsync=off"
        self._command("pg_ctl", "start", "-w", "-D", data, "-l", str(self.dir / "log"), "-o", options)
        return self

    def stop(self, remove: bool = True, mode: str = "immediate") -> None:
        """Stop (``immediate``: as a crash would); ``remove=False`` keeps the data for :meth:`start`."""
        try:
            # Not running any more (a test stopped it) is fine too.
            self._command("pg_ctl", "stop", "-m", mode, "-D", str(self.dir / "data"), check=False)
        finally:
            if remove:
                shutil.rmtree(self.dir, ignore_errors=True)

    def running(self) -> bool:
        """Whether the server is up (its postmaster.pid is removed when it stops)."""
        return (self.dir / "data" / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create(self, name: str) -> str:
        """Make database ``name`` unless it exists (with PostgreSQL's ``createdb``); its URL."""
        try:
            self._command("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name)
        except RuntimeError as e:
            if "already exists" not in str(e):
                raise
        return self.url(name)

    def database(self) -> str:
        """A new, empty database's URL."""
        return self.create(f"test{next(self._numbers)}")


class Redis:
    """A Redis server keeping nothing on disk, stopped with :meth:`stop`."""

    def __init__(self, directory: Path | None = None) -> None:
        self.port = free_port()
        self.dir = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Redis:
        command = [binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no"]
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            command += ["--dir", str(self.dir), "--logfile", str(self.dir / "log")]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, self._process)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class _Stop(Exception):
    """SIGINT or SIGTERM arrived: stop the servers."""


def _stop(signum: int, frame: object) -> None:
    raise _Stop()


_TOML = """\
[store]
url = "{store}"

[cluster]
redis = "{redis}"
"""


def serve(directory: Path, out: TextIO) -> None:
    """``livetx dev-cluster``: run both servers in ``directory`` until SIGINT or SIGTERM.

    Writes and prints the config that points a server at them. PostgreSQL's
    data stays in the directory (a later run starts it again, on new ports);
    Redis keeps nothing."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    previous = {signum: signal.signal(signum, _stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    postgres = PostgreSQL(directory / "postgresql", durable=True)
    redis = Redis(directory / "redis")
    try:
        postgres.start()
        store = postgres.create(DATABASE)
        redis.start()
        config = directory / "livetx.toml"
        config.write_text(_TOML.format(store=store, redis=redis.url()))
        out.write(
            f"PostgreSQL on 127.0.0.1:{postgres.port} and Redis on 127.0.0.1:{redis.port} run in {directory}; "
            f"Ctrl-C stops them.\nThe config for them, in {config}:\n\n{config.read_text()}\n"
            "Use it (with pip install 'livetx[postgres,cluster]'):\n"
            f"  twistd -n live --workers 2 --config {config}\n"
            f"  livetx keys create --config {config} --scope chat\n"
        )
        out.flush()
        while True:  # until a signal, or one of them stops on its own
            time.sleep(WATCH_SECONDS)
            stopped = [name for name, running in (("PostgreSQL", postgres.running()), ("Redis", redis.running()))
                       if not running]
            if stopped:
                raise RuntimeError(f"{' and '.join(stopped)} stopped on its own; see the log in {directory}")
    except _Stop:
        pass
    finally:
        for signum in previous:  # a second Ctrl-C must not cut the stopping short
            signal.signal(signum, signal.SIG_IGN)
        try:
            redis.stop()
            postgres.stop(remove=False, mode="fast")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    out.write(f"Stopped PostgreSQL and Redis; the database stays in {directory / 'postgresql'}.\n")
    out.flush()
