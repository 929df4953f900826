"""Tools installed for the tests the way a third-party package installs them: entry points.

``installed(tmp_path)`` writes a ``*.dist-info`` with an ``entry_points.txt``
into a directory on ``sys.path``, so the registry finds these through
``importlib.metadata`` exactly as it finds a pip-installed package.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from livetx.tools import Tool

#: What the slow tool saw: ("started", seconds), ("cancelled",), ("finished",).
journal: list[tuple[Any, ...]] = []


def _wait(seconds: float) -> Deferred[dict[str, Any]]:
    journal.append(("started", seconds))

    def finished() -> dict[str, Any]:
        journal.append(("finished",))
        return {"waited": seconds}

    d = deferLater(reactor, seconds, finished)  # cancelling it cancels the timer
    d.addErrback(lambda f: journal.append(("cancelled",)) or f)
    return d


slow = Tool(
    name="slow",
    description="Waits, then says how long.",
    parameters={"type": "object", "properties": {"seconds": {"type": "number", "minimum": 0}},
                "required": ["seconds"]},
    call=_wait,
)


def broken() -> Tool:
    """A factory entry point: the registry calls it for the Tool."""

    def fail() -> None:
        raise RuntimeError("the lights are on fire")

    return Tool("broken", "Always fails.", {"type": "object", "properties": {}}, fail)


@contextmanager
def installed(directory: Path) -> Iterator[None]:
    info = directory / "livetx_test_tools-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: livetx-test-tools\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[livetx.tools]\nslow = tests.tool_fixtures:slow\nbroken = tests.tool_fixtures:broken\n"
    )
    sys.path.insert(0, str(directory))
    journal.clear()
    try:
        yield
    finally:
        sys.path.remove(str(directory))
