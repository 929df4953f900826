"""The package reads as layers: each imports only from its own layer and the layers below it.

From the bottom: shared helpers (errors, audio, threads); the fences
around library internals; engines (providers/) and what they need; the
domain, tools and storage; session and turns (live/); chat and the
metrics; the wire (web/); the cluster and the command-line client; the
wiring (engines.py, service.py, tap.py, cli.py) on top. No arrow points up.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "livetx"

#: Every package and top-level module of livetx, by layer, bottom first.
LAYERS: list[set[str]] = [
    {"__init__", "errors", "audio", "deferreds", "threads", "config", "logs", "archive", "lastresort"},
    {"fences"},
    {"providers", "testing"},
    {"domain", "tools"},
    {"store", "auth", "storage"},
    {"live"},
    {"chat", "metrics"},
    {"web", "telephony", "devices", "diagram"},
    {"cluster", "client"},
    {"engines", "service", "tap", "cli", "__main__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}

#: Besides the order: what a package must never import, though it sits above it.
FORBIDDEN = {
    "live": ("livetx.store",),
    "tools": ("livetx.store",),
}
#: Modules under every layer: they import nothing of livetx.
BOTTOM = {"errors.py", "audio.py", "threads.py"}
#: Within a layer: the socket uses the tracker and the flow control, never the other way round.
WITHIN = {
    "web/connections.py": ("livetx.web.protocol", "livetx.web.flow"),
    "web/flow.py": ("livetx.web.",),
}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def unit_of(module: str) -> str:
    """``livetx.web.protocol`` → ``web``; ``livetx`` → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def units() -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        found.setdefault(parts[0] if len(parts) > 1 else path.stem, []).append(path)
    return found


def upward(found: dict[str, list[Path]]) -> list[str]:
    arrows = []
    for unit, paths in found.items():
        for path in paths:
            for name in imported(path):
                if name.startswith("livetx") and RANK[unit_of(name)] > RANK[unit]:
                    arrows.append(f"{unit}: {path.name} imports {name}")
    return sorted(arrows)


def test_every_package_and_module_has_a_layer() -> None:
    assert sorted(set(units()) - set(RANK)) == []


def test_no_arrow_points_up() -> None:
    assert upward(units()) == []


def test_the_rule_sees_an_upward_arrow(tmp_path: Path) -> None:
    """A provider that imported the web layer would be caught (the check is not vacuous)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from livetx.web.replies import error_body\n")
    assert upward({"providers": [bad]}) == ["providers: bad.py imports livetx.web.replies"]


def test_each_layer_keeps_its_own_exclusions() -> None:
    found = []
    for package, forbidden in FORBIDDEN.items():
        for path in (PACKAGE / package).rglob("*.py"):
            found += [f"{path.relative_to(PACKAGE)} imports {name}" for name in imported(path)
                      if name.startswith(forbidden)]
    for module in BOTTOM:
        found += [f"{module} imports {name}" for name in imported(PACKAGE / module) if name.startswith("livetx")]
    for module, within in WITHIN.items():
        found += [f"{module} imports {name}" for name in imported(PACKAGE / module) if name.startswith(within)]
    assert sorted(found) == []
