"""The ``livetx`` command: credentials for clients, and a client (``say``, ``talk``).

Scripts rely on one contract: a created key or token is the last line printed.
``say`` and ``talk`` print the reply on stdout and exit with a code from
:mod:`livetx.client.session` (0 ok, 1 server error, 2 usage, 3 connection, 4 timeout,
5 ``talk`` heard nothing, 6 credential refused).
"""

from __future__ import annotations

import getopt
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from twisted.python import usage

from livetx import __version__, config as configuration
from livetx.auth.keys import CorruptKeyFile, KeyStore, resolve_username
from livetx.auth.tokens import SECRET_FILE, issue_token, load_or_create_secret


class _Command(usage.Options):
    """Every ``livetx`` command: its own usage line, and ``--version`` says livetx's version."""

    synopsis = "[options]"

    def getSynopsis(self) -> str:
        words: list[str] = [self.synopsis]
        node: usage.Options = self
        while node.parent is not None:
            words.insert(0, node.parent.subCommand or "")
            node = node.parent
        return " ".join(["Usage: livetx", *words]).rstrip()

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"livetx {__version__}")
        sys.exit(0)


class _DataDirOptions(_Command):
    synopsis = "[--data-dir DIR]"
    optParameters: list[list[Any]] = [
        ["data-dir", "d", None, f"The server's data directory ({configuration.DATA_DIR_HELP})."],
    ]

    @property
    def data_dir(self) -> Path:
        return configuration.data_dir(self["data-dir"])


class KeysCreate(_DataDirOptions):
    synopsis = "--scope chat [--name NAME] [--data-dir DIR]"
    optParameters: list[list[Any]] = [["name", "n", None, "A label to recognise the key by."]]

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
    synopsis = "KEY_ID [--data-dir DIR]"

    def parseArgs(self, key_id: str) -> None:  # type: ignore[override]  # Twisted passes the arguments
        self["id"] = key_id


class KeysOptions(_Command):
    synopsis = "create|list|revoke [options]"
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
    synopsis = "--username NAME [--ttl SECONDS] [--config FILE] [--data-dir DIR]"
    optParameters: list[list[Any]] = [
        ["username", "u", None, "Whose token it is."],
        ["ttl", "t", 86400.0, "Seconds until it expires.", float],
        ["config", "c", None, "The server's TOML config, if it sets [auth] jwt_secret."],
    ]

    def postOptions(self) -> None:
        if not self["username"]:
            raise usage.UsageError("--username is required")
        username, problem = resolve_username(self["username"])
        if username != self["username"]:  # the server would refuse it (BAD_USER)
            raise usage.UsageError(f"{problem or 'Invalid username'}: {self['username']!r}")


class _TurnOptions(_Command):
    """What ``say`` and ``talk`` share: where, who, and what to do with the reply."""

    optFlags = [
        ["json", "j", "Print every frame received as one JSON line (and nothing else on stdout)."],
        ["play", None, "Play the reply audio when a player (paplay, aplay, ffplay) exists."],
        ["insecure", None, "INSECURE, for testing only: accept any wss:// certificate, so anyone on the "
                           "path can read and change the conversation. Prefer --cafile."],
    ]
    optParameters: list[list[Any]] = [
        ["token", "t", None, "A dashboard JWT (see: livetx token); or set LIVETX_TOKEN."],
        ["api-key", "k", None, "An API key with the chat scope; or set LIVETX_API_KEY."],
        ["username", "u", None, "Who is talking, with --api-key."],
        ["out", "o", None, "Write the reply audio, in order, to this file (WAV)."],
        ["interrupt-after", None, None, "Send interrupt this many seconds after the reply starts.", float],
        ["timeout", None, 60.0, "Give up (exit 4) when the reply has not ended after this many seconds.", float],
        ["cafile", None, None, "Trust the certificates in this PEM file for wss:// (a private CA, or a "
                               "self-signed server's own certificate) instead of the system's."],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Options may follow the URL and text too (``say URL "hi" --token T``)."""
        try:
            pairs, args = getopt.gnu_getopt(options or [], self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        flat: list[str] = []
        for name, value in pairs:
            takes = name[2:] + "=" in self.longOpt if name.startswith("--") else name[1] + ":" in self.shortOpt
            flat += ([f"{name}={value}"] if name.startswith("--") else [name, value]) if takes else [name]
        super().parseOptions([*flat, "--", *args])

    def postOptions(self) -> None:
        self["token"] = self["token"] or os.environ.get("LIVETX_TOKEN")
        self["api-key"] = self["api-key"] or os.environ.get("LIVETX_API_KEY")
        if not self["token"] and not (self["api-key"] and self["username"]):
            raise usage.UsageError("give --token, or --api-key with --username")
        if self["insecure"] and self["cafile"]:
            raise usage.UsageError("give --cafile or --insecure, not both")


class SayOptions(_TurnOptions):
    synopsis = "URL TEXT... [--token JWT | --api-key KEY --username NAME]"

    def parseArgs(self, url: str, *words: str) -> None:  # type: ignore[override]  # Twisted passes the arguments
        if not words:
            raise usage.UsageError("say what? give the text after the URL")
        self["url"], self["text"] = url, " ".join(words)


class TalkOptions(_TurnOptions):
    synopsis = "URL --wav FILE [--token JWT | --api-key KEY --username NAME]"
    optFlags = [["realtime", None, "Send the audio at speaking pace (one 20 ms frame per 20 ms)."]]
    optParameters: list[list[Any]] = [
        ["wav", "w", None, "A WAV file to say (any rate and channels; sent as 16 kHz mono)."],
    ]

    def parseArgs(self, url: str) -> None:  # type: ignore[override]  # Twisted passes the arguments
        self["url"] = url

    def postOptions(self) -> None:
        super().postOptions()
        if not self["wav"]:
            raise usage.UsageError("--wav is required")


class Options(_Command):
    synopsis = "COMMAND [options]"
    longdesc = "Credentials for livetx clients, and a client. The server itself runs as: twistd -n live"
    subCommands = [
        ["keys", None, KeysOptions, "Manage Open API keys."],
        ["token", None, TokenOptions, "Print a dashboard JWT for the Live API (last line)."],
        ["say", None, SayOptions, "Send a text turn to a server and print the reply (--out saves its audio)."],
        ["talk", None, TalkOptions, "Send a WAV file as a voice turn and print the reply (--out saves its audio)."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose a command")


def _say_if_created(what: str, path: Path, existed: bool) -> None:
    """A fresh secret or key store usually means another data dir than the server's: say so, with the path."""
    if not existed:
        print(f"livetx: created a new {what} at {path}; a server started with another data dir "
              f"(--data-dir, ${configuration.DATA_DIR_VARIABLE}) will not accept what it makes", file=sys.stderr)


def keys_create(options: KeysCreate) -> int:
    store = KeyStore(options.data_dir)
    existed = store.path.exists()
    record, key = store.create(options["scopes"], options["name"])
    _say_if_created("key store", store.path, existed)
    print(f"created key {record.id} ({record.name or 'unnamed'}) with scopes {', '.join(record.scopes)}")
    print("store it now; it cannot be shown again:")
    print(key)
    return 0


def keys_list(options: _DataDirOptions) -> int:
    store = KeyStore(options.data_dir)
    if not store.path.exists():
        print(f"livetx: no key store at {store.path} (is that the server's data dir?)", file=sys.stderr)
    print(f"{'id':8}  {'prefix':8}  {'name':16}  {'scopes':14}  {'created':25}  revoked")
    for r in store.list():
        print(f"{r.id:8}  {r.prefix:8}  {(r.name or '-'):16}  {','.join(r.scopes):14}  "
              f"{r.created_at:25}  {r.revoked_at or '-'}")
    return 0


def keys_revoke(options: KeysRevoke) -> int:
    store = KeyStore(options.data_dir)
    if store.revoke(options["id"]):
        print(f"revoked key {options['id']}")
        return 0
    print(f"livetx: no active key with id {options['id']!r} in {store.path}", file=sys.stderr)
    return 1


def token(options: TokenOptions) -> int:
    settings = configuration.load(Path(options["config"]) if options["config"] else None)
    path = options.data_dir / SECRET_FILE
    existed = bool(settings.auth.jwt_secret) or path.exists()
    secret = load_or_create_secret(options.data_dir, settings.auth.jwt_secret)
    _say_if_created("JWT secret", path, existed)
    print(issue_token(secret, options["username"], options["ttl"]))
    return 0


def converse(options: _TurnOptions) -> NoReturn:
    """Run one turn on a reactor of its own; exits with the turn's code (``task.react``)."""
    from twisted.internet.task import react

    from livetx.client.console import run

    async def turn(reactor: Any) -> None:
        try:
            code = await run(reactor, options, sys.stdout, sys.stderr)
        except Exception as e:
            print(f"livetx: {e}", file=sys.stderr)
            code = 1
        if code:
            raise SystemExit(code)

    react(turn)


#: (command, subcommand) → handler; add a row to add a command.
HANDLERS: dict[tuple[str, str | None], Callable[..., int]] = {
    ("keys", "create"): keys_create,
    ("keys", "list"): keys_list,
    ("keys", "revoke"): keys_revoke,
    ("token", None): token,
    ("say", None): converse,
    ("talk", None): converse,
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
    assert options.subCommand is not None  # postOptions insists on one
    handler = HANDLERS[(options.subCommand, leaf)]
    try:
        return handler(sub.subOptions if leaf else sub)
    except (configuration.ConfigError, CorruptKeyFile, ValueError) as e:
        print(f"livetx: {e}", file=sys.stderr)
        return 1
