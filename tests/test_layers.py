"""The package reads as layers: each imports only from the layers below it.

wire (web/) → session and turns (live/, chat/) → engines and storage
(providers/, store/); the service graph (service.py, tap.py) on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "livetx"

#: Package → what it must never import (at any depth, at any place in the module).
FORBIDDEN = {
    "live": ("livetx.web", "livetx.chat", "livetx.tap", "livetx.service", "livetx.store"),
    "providers": ("livetx.live", "livetx.web", "livetx.chat", "livetx.tap", "livetx.service"),
    "store": ("livetx.live", "livetx.web", "livetx.chat", "livetx.tap", "livetx.service"),
    "chat": ("livetx.web", "livetx.tap", "livetx.service"),
    "web": ("livetx.tap", "livetx.service"),
    "tools": ("livetx.live", "livetx.web", "livetx.chat", "livetx.store", "livetx.tap", "livetx.service"),
    # Phone calls sit beside web/: a wire layer over the live session.
    "telephony": ("livetx.tap", "livetx.service", "livetx.chat"),
}
#: Modules under every layer.
BOTTOM = {"domain.py": FORBIDDEN["providers"] + ("livetx.store",), "errors.py": ("livetx.",)}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def offences(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{path.relative_to(PACKAGE)} imports {name}" for name in imported(path)
                  if name.startswith(forbidden))


def test_each_layer_imports_only_from_below() -> None:
    found = []
    for package, forbidden in FORBIDDEN.items():
        for path in (PACKAGE / package).rglob("*.py"):
            found += offences(path, forbidden)
    for module, forbidden in BOTTOM.items():
        found += offences(PACKAGE / module, forbidden)
    assert found == []
