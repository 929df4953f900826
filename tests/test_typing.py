"""The package type-checks in mypy's strict mode, with the settings in setup.cfg."""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent


def test_livetx_is_clean_under_mypy_strict() -> None:
    out, err, status = api.run([
        "--strict", "--config-file", str(ROOT / "setup.cfg"),
        "--cache-dir", str(ROOT / ".mypy_cache"), str(ROOT / "livetx"),
    ])
    assert status == 0, out + err
