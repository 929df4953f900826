"""What the suite runs against: this checkout (in children too), with every engine installed.

Tests that start ``twistd live``, the ``livetx`` command or a worker supervisor
in a child process inherit ``os.environ``. Without the checkout on the child's
``PYTHONPATH`` the child imports whatever ``livetx`` is installed: a test
asserting a frame passed against a checkout that no longer sent it.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import pytest

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


#: The README's test command (scripts/test) installs these extras; tox.ini's environments use the same ones.
EXTRAS = "test,piper,whisper"


def require(module: str) -> Any:
    """An engine the suite tests for real, or a failure saying how to install it.

    A skip would let ``tox`` (or a bare ``pip install -e .[test]``) pass
    with Piper's end-to-end tests never run, as a missing Chromium fails.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} is not installed ({e}); run: pip install -e '.[{EXTRAS}]'")
