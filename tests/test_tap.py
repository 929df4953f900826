"""The twistd plugin's process-level choices, on a MemoryReactor."""

from __future__ import annotations

import gc

from twisted.internet.testing import MemoryReactor

from livetx.service import FreezeStartup


def test_startup_objects_leave_the_cycle_collector_once_the_reactor_runs() -> None:
    reactor = MemoryReactor()
    FreezeStartup(reactor).startService()
    frozen_before = gc.get_freeze_count()
    try:
        reactor.run()
        assert gc.get_freeze_count() > frozen_before
    finally:
        gc.unfreeze()


def test_a_process_whose_reactor_already_runs_keeps_its_collector() -> None:
    reactor = MemoryReactor()
    reactor.running = True
    FreezeStartup(reactor).startService()
    assert reactor.whenRunningHooks == []
