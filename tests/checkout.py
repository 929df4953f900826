"""Child processes the tests start run this checkout, never an installed copy of livetx.

Tests that start ``twistd live``, the ``livetx`` command or a worker supervisor
in a child process inherit ``os.environ``. Without the checkout on the child's
``PYTHONPATH`` the child imports whatever ``livetx`` is installed: a test
asserting a frame passed against a checkout that no longer sent it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

CHECKOUT = Path(__file__).resolve().parent.parent

# Both packages a child loads code from: the server and its twistd plugin.
_PROBE = "import livetx, twisted.plugins.livetx_plugin as p; print(livetx.__file__); print(p.__file__)"


def with_checkout(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the checkout first on ``PYTHONPATH`` (once)."""
    rest = [entry for entry in environ.get("PYTHONPATH", "").split(os.pathsep)
            if entry and Path(entry).resolve() != CHECKOUT]
    return {**environ, "PYTHONPATH": os.pathsep.join([str(CHECKOUT), *rest])}


def foreign_modules(environ: Mapping[str, str], cwd: Path) -> list[str]:
    """The files a child started with ``environ`` in ``cwd`` imports that are not the checkout's."""
    probe = subprocess.run([sys.executable, "-c", _PROBE], env=dict(environ), cwd=cwd,
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return [probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "the probe failed"]
    return [line for line in probe.stdout.split() if not Path(line).resolve().is_relative_to(CHECKOUT)]
