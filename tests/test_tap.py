"""The twistd plugin's process-level choices, on a MemoryReactor."""

from __future__ import annotations

import gc

from twisted.internet.testing import MemoryReactor

from livetx.tap import _FreezeStartup


def test_startup_objects_leave_the_cycle_collector_once_the_reactor_runs() -> None:
    reactor = MemoryReactor()
    _FreezeStartup(reactor).startService()
    frozen_before = gc.get_freeze_count()
    try:
        reactor.run()
        assert gc.get_freeze_count() > frozen_before
    finally:
        gc.unfreeze()


def test_a_process_whose_reactor_already_runs_keeps_its_collector() -> None:
    reactor = MemoryReactor()
    reactor.running = True
    _FreezeStartup(reactor).startService()
    assert reactor.whenRunningHooks == []
