"""Children the tests start run the checkout (issue 27, item 18)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .checkout import CHECKOUT, foreign_modules, with_checkout
from .test_twistd import TWISTD


def test_a_child_started_like_the_server_tests_imports_the_checkout(tmp_path: Path) -> None:
    """As test_shutdown and friends start twistd: ``os.environ``, a temporary working directory."""
    shown = subprocess.run(
        TWISTD[:1] + ["-c", "import livetx, twisted.plugins.livetx_plugin as p; print(livetx.__file__, p.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert shown and all(Path(path).resolve().is_relative_to(CHECKOUT) for path in shown), shown


def test_a_child_importing_another_livetx_is_noticed(tmp_path: Path) -> None:
    """The fail-fast check names the foreign module, so a session stops before any test runs."""
    other = tmp_path / "installed"
    (other / "livetx").mkdir(parents=True)
    (other / "livetx" / "__init__.py").write_text("")
    foreign = foreign_modules({**os.environ, "PYTHONPATH": str(other)}, tmp_path)
    assert foreign and foreign[0] == str(other / "livetx" / "__init__.py")
    assert foreign_modules(with_checkout({**os.environ, "PYTHONPATH": str(other)}), tmp_path) == []


def test_the_checkout_is_put_first_once() -> None:
    env = with_checkout({"PYTHONPATH": os.pathsep.join(["/a", str(CHECKOUT), "/b"])})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(CHECKOUT), "/a", "/b"]
