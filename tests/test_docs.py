"""Generated documentation stays in step with the code it describes."""

from __future__ import annotations

from pathlib import Path

from livetx.live.diagram import render

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_state_diagram_matches_the_table() -> None:
    committed = (DOCS / "state-machine.md").read_text()
    assert committed == render(), "run: python -m livetx.live.diagram > docs/state-machine.md"
