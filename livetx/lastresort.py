"""The last resort of a stopping server: exit anyway when the shutdown does not end.

On SIGTERM the ports close, running turns get ``[server] shutdown_grace``
to finish, what still runs is stopped (bounded too), and then the stores
and pools close; after that the reactor joins its thread pools. Anything
among these that waits on something that never comes (a database that
stopped answering in the middle of a write, a thread stuck in a blocking
call) would keep the process alive with its ports closed: no supervisor
restarts it, no balancer routes around it, and it holds its memory and its
database connections. So :class:`StoppingRoot`, the server's root service,
keeps a deadline of grace plus :data:`EXIT_MARGIN` from the moment it is
told to stop; if the process is still there then, it logs what it was still
waiting for (the services not stopped, the threads still alive) and exits
with status 1.

The deadline runs on a thread of its own: the reactor thread may be the
one that is stuck (joining a thread pool at shutdown). A server stopped
in-process while the reactor runs on (the tests) only logs: the process is
not shutting down, and exiting would be wrong.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Protocol

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

_log = Logger()

#: Seconds past the grace period a shutdown may take before the process exits anyway: the
#: stopped turns' own bound (5 s) and the stores' last writes, with room to spare.
EXIT_MARGIN = 10.0
#: The exit status when the last resort ends the process.
GAVE_UP = 1


class Timer(Protocol):
    def cancel(self) -> None: ...


def daemon_timer(seconds: float, call: Callable[[], None]) -> Timer:
    """``call`` after ``seconds`` on a daemon thread: it must not keep a finished process alive."""
    timer = threading.Timer(seconds, call)
    timer.daemon = True
    timer.name = "livetx-last-resort"
    timer.start()
    return timer


class StoppingRoot(MultiService):
    """A MultiService that stops its children alike, knowing which have not finished, with a deadline."""

    def __init__(self, deadline: float, reactor: Any, start_timer: Callable[[float, Callable[[], None]], Timer]
                 = daemon_timer, exit: Callable[[int], None] = os._exit) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted leaves MultiService unannotated
        self._deadline = deadline
        self._reactor = reactor
        self._start_timer = start_timer
        self._exit = exit
        self._timer: Timer | None = None
        self._pending: dict[int, str] = {}
        self._shutting_down = False
        self._stopped = False

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)

    def _shutdown(self) -> None:
        """The process is ending: watch it to the very end (past this service's own stop)."""
        self._shutting_down = True
        if self._timer is None:
            self._timer = self._start_timer(self._deadline, self._give_up)

    def stopService(self) -> Deferred[Any]:
        Service.stopService(self)  # MultiService's own would stop the children untracked
        if self._timer is None:
            self._timer = self._start_timer(self._deadline, self._give_up)
        stops = []
        for service in reversed(list(self)):
            self._pending[id(service)] = _name(service)
            stop = maybeDeferred(service.stopService)
            stop.addBoth(self._finished, id(service))
            stops.append(stop)
        return DeferredList(stops).addCallback(self._all_stopped)

    def _finished(self, result: Any, key: int) -> Any:
        self._pending.pop(key, None)
        return result

    def _all_stopped(self, result: Any) -> Any:
        self._stopped = True
        if not self._shutting_down and self._timer is not None:  # stopped in-process: the process lives on
            self._timer.cancel()
            self._timer = None
        return result

    def _give_up(self) -> None:
        """At the deadline, on the timer's thread: say what never finished, and end the process."""
        pending = sorted(self._pending.values())
        threads = sorted(t.name for t in threading.enumerate()
                         if t is not threading.current_thread() and t is not threading.main_thread())
        waited = f"services not stopped: {', '.join(pending)}" if pending else "every service stopped"
        if not self._shutting_down:  # the reactor runs on: tell it there, and let it be
            self._reactor.callFromThread(
                _log.error, "Still stopping after {seconds} s ({waited}; threads: {threads})",
                seconds=self._deadline, waited=waited, threads=", ".join(threads) or "none")
            return
        _log.critical("Shutdown did not finish within {seconds} s ({waited}; threads alive: {threads}); "
                      "exiting anyway", seconds=self._deadline, waited=waited, threads=", ".join(threads) or "none")
        self._exit(GAVE_UP)


def _name(service: IService) -> str:
    return service.name or type(service).__name__
