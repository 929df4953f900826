"""``twistd live --workers N``: N reactor processes sharing the listening sockets.

The first process (the supervisor) opens every ``--listen`` endpoint itself,
never accepts on them, and starts N workers, each ``twistd live`` again, with
the listening sockets passed as inherited file descriptors (``childFDs``):
each worker adopts them (``reactor.adoptStreamPort``).

A TCP endpoint becomes N sockets bound to the same address with
``SO_REUSEPORT``, one per worker: the kernel spreads new connections over
them evenly (by a hash of the client's address and port). One socket shared
by every worker, as before, left the split to whichever worker woke first:
20 connections went 20/0, 19/1 and 13/7, and the second core idled. The
supervisor still holds every socket, so the port stays open while a worker
restarts: connections hashed to its socket wait in that socket's queue for
the new worker instead of being lost, and port 0 works (the first socket's
port is the others'). A Unix socket cannot be shared that way and stays one
socket for all.

A worker that exits is started again (after a pause that grows while it
keeps dying at once). Workers log the way the supervisor was told to
(:class:`WorkerLogs`): the same ``--logger``, ``--syslog`` or stdout, and a
log file of their own beside the supervisor's. SIGTERM to the supervisor
is passed to every worker, each of which drains as a lone server does; the
supervisor exits when they all have. Workers also get SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.fences.twisted_tcp import accept_one_at_a_time

_log = Logger()

#: Seconds before a dead worker is started again; doubled while it keeps dying within a minute.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
#: Endpoint kinds a worker can adopt (TLS is for the proxy in front, or a single process).
SHAREABLE = ("tcp", "tcp6", "unix")
#: The first inherited descriptor number in a worker.
FIRST_FD = 3

_FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}


def unshareable(description: str) -> bool:
    """Whether a ``--listen`` endpoint cannot be handed to workers."""
    return description.split(":", 1)[0].lower() not in SHAREABLE


def adopt(reactor: Any, spec: str, factory: Any) -> Any:
    """In a worker: listen on an inherited socket, given as ``FD:FAMILY`` (``5:inet``)."""
    fd, _, family = spec.partition(":")
    return reactor.adoptStreamPort(int(fd), _FAMILIES[family], factory)


class AdoptedPort(Service):
    """In a worker: a listening socket inherited from the supervisor, served with ``factory``."""

    def __init__(self, reactor: Any, spec: str, factory: Any) -> None:
        self._reactor, self._spec, self._factory = reactor, spec, factory
        self._port: Any = None

    def startService(self) -> None:
        super().startService()
        self._port = adopt(self._reactor, self._spec, self._factory)
        accept_one_at_a_time(self._port)  # the idlest worker takes each new socket

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return self._port.stopListening() if self._port is not None else None


def as_worker(reactor: Any, index: int) -> None:
    """Set up a worker process: it dies with the supervisor, drains once however often told,
    and its log lines say which worker it is (the workers' lines share one stream)."""
    from twisted.logger import globalLogPublisher

    from livetx.fences.twisted_logger import name_every_event

    reactor.addSystemEventTrigger("before", "shutdown", signal.signal, signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    name_every_event(globalLogPublisher, "worker", index)


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the supervisor goes, so no worker outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() == 1:  # the supervisor died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def _family(port: Any) -> str:
    host = port.getHost()
    kind = type(host).__name__
    return {"IPv4Address": "inet", "IPv6Address": "inet6"}.get(kind, "unix")


@dataclass(frozen=True)
class Held:
    """A listening socket the supervisor holds open for a worker (or for all of them)."""

    fd: int
    family: str
    close: Any


def _shared(port: Any) -> Held:
    port.stopReading()  # the workers accept; the supervisor only holds the socket
    return Held(port.fileno(), _family(port), port.stopListening)


def reuseport_sockets(address: Any, family: str, backlog: int, count: int) -> list[Held]:
    """``count`` listening sockets on one address, each with ``SO_REUSEPORT``."""
    held = []
    for _ in range(count):
        sock = socket.socket(_FAMILIES[family], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address.host, address.port))
        sock.listen(backlog)
        # As adoptStreamPort requires: a blocking accept that finds the queue empty would stop the
        # adopting reactor until the next connection (Twisted accepts until told there is no more).
        sock.setblocking(False)
        held.append(Held(sock.fileno(), family, sock.close))
    return held


def _backlog(description: str) -> int:
    match = re.search(r"(?:^|:)backlog=(\d+)", description)
    return int(match.group(1)) if match else 50  # Twisted's default


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = supervisor.reactor.seconds()
        self.ended: Deferred[None] = Deferred()
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor.ended(self, reason)


@dataclass(frozen=True)
class WorkerLogs:
    """Where workers log: as twistd's own options told the supervisor to.

    Without this a worker, always run with ``--nodaemon``, logged plain text
    to the inherited stdout: lost when the supervisor was a daemon or wrote
    to a file, and not JSON when ``--logger`` asked for JSON. A log file is
    not shared: twistd's file neither appends atomically nor rotates with
    other writers, so each worker gets one beside it (``livetx.log`` →
    ``livetx.worker-0.log``)."""

    args: tuple[str, ...] = ()
    logfile: str | None = None

    @classmethod
    def like(cls, twistd: Any) -> WorkerLogs:
        """From twistd's parsed options (``None``: the defaults of ``twistd -n``)."""
        if twistd is None:
            return cls()
        logger = twistd.get("logger")
        if logger is not None:  # twistd: takes precedence over --logfile and --syslog
            name = getattr(logger, "__qualname__", None)
            if name is None:  # not a function or class: twistd kept no name to hand on
                _log.warn("Workers log to stdout: --logger {logger!r} has no name to pass them", logger=logger)
                return cls()
            return cls(("--logger", f"{logger.__module__}.{name}"))
        if twistd.get("syslog"):
            return cls(("--syslog", "--prefix", twistd["prefix"]))
        logfile = twistd.get("logfile") or (None if twistd.get("nodaemon") else "twistd.log")
        if logfile == "-":
            return cls(("--logfile=-",))
        return cls((), os.path.abspath(logfile) if logfile else None)

    def argv(self, index: int) -> list[str]:
        """twistd's logging options for worker ``index``."""
        if self.logfile is None:
            return list(self.args)
        path = Path(self.logfile)
        return [*self.args, "--logfile", str(path.with_name(f"{path.stem}.worker-{index}{path.suffix}"))]


class Supervisor(Service):
    """Holds the listening sockets and keeps N workers running."""

    def __init__(self, reactor: Any, listen: list[str], workers: int, worker_args: list[str],
                 metrics_dir: str | None = None, logs: WorkerLogs = WorkerLogs()) -> None:
        self.reactor = reactor
        self._listen = listen
        self._count = workers
        self._args = worker_args
        self._logs = logs
        #: Per worker, the sockets it accepts on (a Unix socket's Held is in every list).
        self._held: list[list[Held]] = [[] for _ in range(workers)]
        self._workers: dict[int, _Worker] = {}
        self._delay: dict[int, float] = {}
        self._own_metrics_dir = metrics_dir is None
        self.metrics_dir = metrics_dir or tempfile.mkdtemp(prefix="livetx-metrics-")

    def startService(self) -> None:
        super().startService()
        listening = [endpoints.serverFromString(self.reactor, d).listen(Factory.forProtocol(Protocol))
                     for d in self._listen]
        DeferredList(listening, fireOnOneErrback=True, consumeErrors=True).addCallbacks(
            self._listening, self._cannot_listen)

    def _listening(self, results: list[tuple[bool, Any]]) -> None:
        """Twisted's endpoints parsed each description and resolved port 0; now the sockets the workers get.

        Twisted cannot set ``SO_REUSEPORT`` before it binds, so a TCP port is
        closed once listening and its address bound again, once per worker.
        """
        closing = []
        rebind = []
        for (_, port), description in zip(results, self._listen):
            if _family(port) == "unix":
                shared = _shared(port)
                for held in self._held:
                    held.append(shared)
                _log.info("Workers share {address}", address=str(port.getHost()))
            else:
                rebind.append((port.getHost(), _family(port), _backlog(description)))
                closing.append(port.stopListening())
        DeferredList(closing).addCallback(lambda _: self._rebind(rebind)).addErrback(self._cannot_listen)

    def _rebind(self, addresses: list[tuple[Any, str, int]]) -> None:
        for address, family, backlog in addresses:
            for held, own in zip(self._held, reuseport_sockets(address, family, backlog, self._count)):
                held.append(own)
            _log.info("Workers each accept on {address} (SO_REUSEPORT)", address=str(address))
        for index in range(self._count):
            self._spawn(index)

    def _cannot_listen(self, failure: Failure) -> None:
        error = getattr(failure.value, "subFailure", failure)
        sys.stderr.write(f"livetx: cannot listen: {error.getErrorMessage()}\n")
        self.reactor.stop()

    def _spawn(self, index: int) -> None:
        if not self.running:
            return
        fds: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        adopted: list[str] = []
        for n, held in enumerate(self._held[index]):
            fds[FIRST_FD + n] = held.fd
            adopted += ["--adopt", f"{FIRST_FD + n}:{held.family}"]
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
                *self._logs.argv(index), "live", *self._args, *adopted, "--worker", str(index),
                "--metrics-dir", self.metrics_dir]
        worker = _Worker(self, index)
        self._workers[index] = worker
        self.reactor.spawnProcess(worker, sys.executable, argv, env=os.environ.copy(), childFDs=fds)
        _log.info("Started worker {index} (pid {pid})", index=index, pid=worker.pid)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self._workers.get(worker.index) is not worker:
            return
        del self._workers[worker.index]
        mark_dead(self.metrics_dir, worker.pid)
        if not self.running:
            return
        quick = self.reactor.seconds() - worker.started < 60
        delay = min(self._delay.get(worker.index, RESTART_DELAY / 2) * 2, MAX_RESTART_DELAY) if quick else RESTART_DELAY
        self._delay[worker.index] = delay
        _log.warn("Worker {index} (pid {pid}) ended: {why}; starting it again in {delay:g} s",
                  index=worker.index, pid=worker.pid, why=reason.getErrorMessage(), delay=delay)
        self.reactor.callLater(delay, self._spawn, worker.index)

    def stopService(self) -> Deferred[Any]:
        """SIGTERM every worker (each drains) and wait for them all; then let the sockets go."""
        super().stopService()
        waiting = []
        for worker in list(self._workers.values()):
            waiting.append(worker.ended)
            try:
                worker.transport.signalProcess("TERM")  # type: ignore[union-attr]
            except ProcessExitedAlready:
                pass
        for close in {id(h.close): h.close for held in self._held for h in held}.values():
            close()
        self._held = [[] for _ in self._held]

        def cleaned(_: Any) -> None:
            if self._own_metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

        return DeferredList(waiting).addCallback(cleaned)


def mark_dead(directory: str, pid: int | None) -> None:
    """A worker's counts outlive it (counters never go back); its gauges do not."""
    if pid is None:
        return
    path = Path(directory) / f"worker-{pid}.json"
    if path.exists():
        path.rename(path.with_name(f"dead-{pid}.json"))
