"""The livetx command: scripts read the last line, and exit codes mean something."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from twisted.python import usage

from livetx.auth.keys import KeyStore
from livetx.auth.tokens import load_or_create_secret, verify_token
from livetx import __version__
from livetx.cli import Options, main


def last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_keys_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--data-dir", str(tmp_path), "--scope", "chat", "--name", "pi"]) == 0
    key = last_line(capsys)
    record = KeyStore(tmp_path).verify(key, "chat")
    assert record is not None and record.name == "pi"

    assert main(["keys", "list", "-d", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert record.id in listing and key not in listing and record.sha256 not in listing

    assert main(["keys", "revoke", "-d", str(tmp_path), record.id]) == 0
    assert KeyStore(tmp_path).verify(key, "chat") is None
    assert main(["keys", "revoke", "-d", str(tmp_path), record.id]) == 1


def test_token_uses_the_servers_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "-d", str(tmp_path), "--username", "zoe", "--ttl", "60"]) == 0
    assert verify_token(load_or_create_secret(tmp_path, None), last_line(capsys)) == "zoe"
    config = tmp_path / "c.toml"
    config.write_text('[auth]\njwt_secret = "from-the-config-file-and-long-enough"\n')
    assert main(["token", "-d", str(tmp_path), "-u", "zoe", "--config", str(config)]) == 0
    assert verify_token("from-the-config-file-and-long-enough", last_line(capsys)) == "zoe"


def test_usage_and_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "-d", str(tmp_path)]) == 2
    assert main(["token", "-d", str(tmp_path)]) == 2
    assert main(["keys", "create", "-d", str(tmp_path), "--scope", "root"]) == 1
    bad = tmp_path / "bad.toml"
    bad.write_text("[auth]\nsecret = 1\n")
    assert main(["token", "-u", "x", "-d", str(tmp_path), "-c", str(bad)]) == 1
    assert "livetx: [auth] unknown key 'secret'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["keys", "list"], ["keys", "create", "--scope", "chat"],
                                     ["keys", "revoke"], ["token", "-u", "al"]])
def test_a_setting_whose_extra_is_missing_names_the_extra(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[store]\nurl = "postgresql://nobody@127.0.0.1:1/none"\n')
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as without the extra: importing it fails
    key_id = ["k1"] if command[-1] == "revoke" else []
    assert main([*command, "-d", str(tmp_path), "--config", str(config), *key_id]) == 1
    assert capsys.readouterr().err == "livetx: [store] url needs: pip install 'livetx[postgres]'\n"


def test_as_a_real_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "livetx", "keys", "create", "-d", str(tmp_path), "--scope", "chat"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.strip().splitlines()[-1].startswith("abk_")
    result = subprocess.run([sys.executable, "-m", "livetx", "nonsense"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "livetx:" in result.stderr


def test_the_data_dir_comes_from_the_environment_and_a_fresh_one_is_announced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, elsewhere = tmp_path / "server-data", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("LIVETX_DATA_DIR", str(data))
    assert main(["token", "-u", "zoe"]) == 0
    out, err = capsys.readouterr()
    secret = data / "jwt_secret"
    assert verify_token(load_or_create_secret(data, None), out.strip().splitlines()[-1]) == "zoe"
    assert f"created a new JWT secret at {secret}" in err and "LIVETX_DATA_DIR" in err
    assert main(["keys", "create", "--scope", "chat"]) == 0
    assert f"created a new key store at {data / 'api_keys.json'}" in capsys.readouterr().err
    assert not (elsewhere / "livetx-data").exists()  # nothing made in the working directory

    assert main(["token", "-u", "zoe"]) == 0 and main(["keys", "create", "--scope", "chat"]) == 0
    assert capsys.readouterr().err == ""  # the same secret and store again: nothing to say
    assert main(["keys", "list", "-d", str(tmp_path / "empty")]) == 0
    assert f"no key store at {tmp_path / 'empty' / 'api_keys.json'}" in capsys.readouterr().err
    assert main(["token", "-u", "zoe", "-d", str(tmp_path / "flag")]) == 0  # --data-dir wins
    assert (tmp_path / "flag" / "jwt_secret").exists()


@pytest.mark.parametrize("command", [["talk"], ["keys", "create"], ["token"], []])
def test_help_and_version(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(" ".join(["Usage: livetx", *(command or ["COMMAND"])]) + " "), first
    assert ("COMMAND" in first) == (not command)
    with pytest.raises(SystemExit):
        main([*command, "--version"])
    assert capsys.readouterr().out == f"livetx {__version__}\n"  # not Twisted's


@pytest.mark.parametrize("name", ["line\nbreak", "tab\there", "x" * 65, "bang!", " padded"])
def test_token_refuses_a_username_the_server_would(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    name: str) -> None:
    """Issue 13.10: the same rules as API-key usernames."""
    assert main(["token", "-d", str(tmp_path), "-u", name]) == 2
    assert "Invalid username" in capsys.readouterr().err
    assert not list(tmp_path.glob("jwt_secret"))  # refused before a secret is made


def commands(options: usage.Options = Options()) -> Iterator[tuple[str, usage.Options]]:
    """Every command and subcommand's options, by name."""
    for name, _, make, _ in getattr(options, "subCommands", []):
        sub = make()
        yield name, sub
        yield from ((f"{name} {leaf}", o) for leaf, o in commands(sub))


def test_a_short_option_means_one_thing_in_every_command() -> None:
    meanings: dict[str, set[str]] = {}
    for _, options in commands():
        for short, long in options.synonyms.items():
            if len(short) == 1 and short != long:
                meanings.setdefault(short, set()).add(long)
    assert {short: longs for short, longs in meanings.items() if len(longs) > 1} == {}


def test_every_command_that_reads_the_config_names_it_in_its_usage_line() -> None:
    readers = [name for name, options in commands() if "config" in options.defaults]
    assert "keys create" in readers and "token" in readers
    assert [name for name in readers if "[--config FILE]" not in dict(commands())[name].getSynopsis()] == []
