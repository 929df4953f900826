"""``scripts/test``, the README's one test command, run for real with the system's installers stood in for.

apt-get and pip would change this machine, so stand-ins on ``PATH`` (and
``$PYTHON``) write down how they were called; the script itself, its shell,
and the README block ``.ci/run`` extracts are the real ones.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "test"
PACKAGES = ["chromium", "chromium-driver", "redis-server", "haproxy"]


def stand_in(directory: Path, name: str, body: str = "") -> None:
    path = directory / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "$CALLS"\n{body}')
    path.chmod(0o755)


def run_script(tmp_path: Path, *args: str, user: int, tools: tuple[str, ...]) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run scripts/test with a PATH holding only ``tools`` of the real ones, and the stand-ins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "ls", "head", "dirname", *tools):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    stand_in(bin_dir, "id", f'case "$1" in -u) echo {user};; -un) echo someone;; esac\n')
    stand_in(bin_dir, "apt-get")
    stand_in(bin_dir, "python", 'case "$*" in *pytest*) exit 7;; esac\n')  # pytest's exit code comes back
    calls = tmp_path / "calls"
    env = {"PATH": str(bin_dir), "CALLS": str(calls), "PYTHON": str(bin_dir / "python")}
    result = subprocess.run([str(bin_dir / "sh"), str(SCRIPT), *args], capture_output=True, text=True,
                            env=env, timeout=60)
    return result, [line for line in calls.read_text().splitlines() if not line.startswith("id ")]


def postgresql_if_missing(path: str) -> list[str]:
    found = shutil.which("initdb", path=path) or glob.glob("/usr/lib/postgresql/*/bin/initdb")
    return [] if found else ["postgresql"]


def test_as_root_it_installs_the_servers_then_the_package_then_runs_pytest(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, "-q", "tests/test_docs.py", user=0, tools=())
    assert result.returncode == 7, result.stderr
    assert calls == [
        "apt-get update",
        "apt-get install -y --no-install-recommends " + " ".join(PACKAGES + postgresql_if_missing(str(tmp_path / "bin"))),
        "python -m pip install -e .[test,piper,whisper] --config-settings editable_mode=compat",
        "python -m pytest -q tests/test_docs.py",
    ]


def test_without_root_it_names_what_is_missing_in_one_line_and_carries_on(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, user=1000, tools=("haproxy",))
    assert not any(call.startswith("apt-get") for call in calls)
    assert calls[-1] == "python -m pytest"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    missing = "chromium chromedriver redis-server" + "".join(
        " initdb" for _ in postgresql_if_missing(str(tmp_path / "bin")))
    assert lines[0].startswith(f"scripts/test: cannot install as someone, missing: {missing}; as root: apt-get install ")


def test_ci_runs_exactly_what_the_readme_shows(tmp_path: Path) -> None:
    """.ci/run, in a copy of the repository whose scripts/test only says it ran."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    (tmp_path / "scripts" / "test").write_text('#!/bin/sh\necho "scripts/test ran with [$*]"\n')
    (tmp_path / "scripts" / "test").chmod(0o755)
    result = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "+ ./scripts/test\nscripts/test ran with []\n"
    assert os.access(SCRIPT, os.X_OK)
