"""``/metrics`` under ``--workers``: any worker's scrape shows every worker's counts, once each.

The same job as ``prometheus_client``'s multiprocess mode, done the way
:mod:`livetx.metrics` counts (plain numbers, the library imported only at
the first scrape): each worker writes its counts, as JSON, to a file of its
own in a directory the supervisor made, at most once a second and once more
as it stops; a scrape writes its own worker's file afresh and adds up every
file. Counters and histograms of a worker that died stay in the sum (the
supervisor renames its file ``dead-PID``), so totals never go backwards;
its gauges (open connections) drop out. A scrape therefore sees the other
workers' counts as of at most a second ago.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Sequence

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from livetx.metrics import ServerMetrics

_log = Logger()

#: Seconds between writes of a worker's counts.
INTERVAL = 1.0


class SharedMetrics(Service):
    """Writes this worker's counts to the shared directory and reads everyone's at a scrape."""

    def __init__(self, metrics: ServerMetrics, directory: Path, clock: Any) -> None:
        self._metrics = metrics
        self._dir = directory
        self._path = directory / f"worker-{os.getpid()}.json"
        self._loop = LoopingCall(self.write)
        self._loop.clock = clock
        metrics.source = self.combined

    def write(self) -> None:
        temporary = self._path.with_suffix(f".{threading.get_ident()}.tmp")  # the scrape writes from a thread
        temporary.write_text(json.dumps(self._metrics.snapshot(), separators=(",", ":")))
        temporary.replace(self._path)

    def combined(self) -> Sequence[Any]:
        """Every worker's families summed (called by the scrape, in a thread)."""
        self.write()
        snapshots = []
        for path in sorted(self._dir.glob("*.json")):
            try:
                snapshots.append((json.loads(path.read_text()), path.name.startswith("worker-")))
            except (OSError, ValueError):  # renamed or half-written meanwhile: next scrape
                continue
        return self._metrics.combine(snapshots)

    def startService(self) -> None:
        super().startService()
        self._loop.start(INTERVAL, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.write()
