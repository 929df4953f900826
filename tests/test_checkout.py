"""The suite runs the checkout (issue 27, item 18) with every engine installed (item 20)."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .checkout import CHECKOUT, EXTRAS, foreign_modules, require, with_checkout
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


def test_tox_installs_the_extras_the_readme_installs() -> None:
    """``tox`` runs the same suite as the README's command (scripts/test): Piper's tests must not skip there."""
    readme = (CHECKOUT / "README.md").read_text()
    assert readme.split("<!-- test-command -->")[1].split("```")[1].split() == ["sh", "./scripts/test"]
    (installed,) = re.findall(r"pip install -e '\.\[([a-z,]+)\]'", (CHECKOUT / "scripts" / "test").read_text())
    tox = configparser.ConfigParser()
    tox.read(CHECKOUT / "tox.ini")
    assert tox["testenv"]["extras"].split() == installed.split(",") == EXTRAS.split(",")


def test_a_missing_engine_fails_the_test_saying_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)  # import piper now raises ImportError
    with pytest.raises(pytest.fail.Exception, match=r"piper is not installed .*pip install -e '\.\[test,piper,whisper\]'"):
        require("piper")
