"""The ``livetx`` command: credentials for clients (more subcommands can join).

Scripts rely on one contract: a created key or token is the last line printed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from twisted.python import usage

from livetx import __version__, config as configuration
from livetx.auth.keys import CorruptKeyFile, KeyStore
from livetx.auth.tokens import issue_token, load_or_create_secret


class _DataDirOptions(usage.Options):
    longdesc = ""
    optParameters = [["data-dir", "d", configuration.DEFAULT_DATA_DIR, "The server's data directory."]]

    @property
    def data_dir(self) -> Path:
        return Path(self["data-dir"]).expanduser()


class KeysCreate(_DataDirOptions):
    synopsis = "--scope chat [--name NAME]"
    optParameters = [["name", "n", None, "A label to recognise the key by."]]

    def __init__(self) -> None:
        super().__init__()
        self["scopes"] = []

    def opt_scope(self, scope: str) -> None:
        """A scope the key grants (repeatable): chat, config, file or im."""
        self["scopes"].append(scope)

    def postOptions(self) -> None:
        if not self["scopes"]:
            raise usage.UsageError("give at least one --scope (chat for the Live API)")


class KeysRevoke(_DataDirOptions):
    synopsis = "KEY_ID"

    def parseArgs(self, key_id: str) -> None:
        self["id"] = key_id


class KeysOptions(usage.Options):
    longdesc = "Open API keys are stored hashed in the data dir; the server sees changes at once."
    subCommands = [
        ["create", None, KeysCreate, "Create an API key and print it (last line)."],
        ["list", None, _DataDirOptions, "List keys (never the keys themselves)."],
        ["revoke", None, KeysRevoke, "Revoke a key by its id."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose create, list or revoke")


class TokenOptions(_DataDirOptions):
    optParameters = [
        ["username", "u", None, "Whose token it is."],
        ["ttl", "t", 86400.0, "Seconds until it expires.", float],
        ["config", "c", None, "The server's TOML config, if it sets [auth] jwt_secret."],
    ]

    def postOptions(self) -> None:
        if not self["username"]:
            raise usage.UsageError("--username is required")


class Options(usage.Options):
    synopsis = "livetx COMMAND [options]"
    longdesc = "Credentials for livetx clients. The server itself runs as: twistd -n live"
    subCommands = [
        ["keys", None, KeysOptions, "Manage Open API keys."],
        ["token", None, TokenOptions, "Print a dashboard JWT for the Live API (last line)."],
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"livetx {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose a command")


def keys_create(options: KeysCreate) -> int:
    record, key = KeyStore(options.data_dir).create(options["scopes"], options["name"])
    print(f"created key {record.id} ({record.name or 'unnamed'}) with scopes {', '.join(record.scopes)}")
    print("store it now; it cannot be shown again:")
    print(key)
    return 0


def keys_list(options: _DataDirOptions) -> int:
    print(f"{'id':8}  {'prefix':8}  {'name':16}  {'scopes':14}  {'created':25}  revoked")
    for r in KeyStore(options.data_dir).list():
        print(f"{r.id:8}  {r.prefix:8}  {(r.name or '-'):16}  {','.join(r.scopes):14}  "
              f"{r.created_at:25}  {r.revoked_at or '-'}")
    return 0


def keys_revoke(options: KeysRevoke) -> int:
    if KeyStore(options.data_dir).revoke(options["id"]):
        print(f"revoked key {options['id']}")
        return 0
    print(f"livetx: no active key with id {options['id']!r}", file=sys.stderr)
    return 1


def token(options: TokenOptions) -> int:
    settings = configuration.load(Path(options["config"]) if options["config"] else None)
    secret = load_or_create_secret(options.data_dir, settings.auth.jwt_secret)
    print(issue_token(secret, options["username"], options["ttl"]))
    return 0


#: (command, subcommand) → handler; add a row to add a command.
HANDLERS: dict[tuple[str, str | None], Callable[..., int]] = {
    ("keys", "create"): keys_create,
    ("keys", "list"): keys_list,
    ("keys", "revoke"): keys_revoke,
    ("token", None): token,
}


def main(argv: list[str] | None = None) -> int:
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(options.subOptions if options.subCommand else options, file=sys.stderr)
        print(f"livetx: {e}", file=sys.stderr)
        return 2
    sub = options.subOptions
    leaf = getattr(sub, "subCommand", None)
    handler = HANDLERS[(options.subCommand, leaf)]
    try:
        return handler(sub.subOptions if leaf else sub)
    except (configuration.ConfigError, CorruptKeyFile, ValueError) as e:
        print(f"livetx: {e}", file=sys.stderr)
        return 1
