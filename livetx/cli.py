"""The ``livetx`` command: credentials for clients, and a client (``say``, ``talk``).

Scripts rely on one contract: a created key or token is the last line printed.
``say`` and ``talk`` print the reply on stdout and exit with a code from
:mod:`livetx.client.session` (0 ok, 1 server error, 2 usage, 3 connection, 4 timeout,
5 ``talk`` heard nothing, 6 credential refused).
"""

from __future__ import annotations

import functools
import getopt
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from twisted.python import usage

from livetx import __version__, config as configuration, storage
from livetx.auth.keys import KEYS_FILE, CorruptKeyFile, KeyStore, resolve_username
from livetx.auth.login_links import DEFAULT_PAGE, DEFAULT_USERNAME, LINK_SECONDS, issue_link_code, link_url
from livetx.auth.tokens import issue_token


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


class _AnyOrder(_Command):
    """Options may follow the arguments too (``say URL "hi" --token T``, ``devices revoke MAC --data-dir D``)."""

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            pairs, args = getopt.gnu_getopt(options or [], self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        flat: list[str] = []
        for name, value in pairs:
            takes = name[2:] + "=" in self.longOpt if name.startswith("--") else name[1] + ":" in self.shortOpt
            flat += ([f"{name}={value}"] if name.startswith("--") else [name, value]) if takes else [name]
        super().parseOptions([*flat, "--", *args])


class _DataDirOptions(_Command):
    synopsis = "[--data-dir DIR] [--config FILE]"
    optParameters: list[list[Any]] = [
        ["data-dir", "d", None, f"The server's data directory ({configuration.DATA_DIR_HELP})."],
        ["config", "c", None, "The server's TOML config: its [store] url and [auth] jwt_secret apply."],
    ]

    @property
    def data_dir(self) -> Path:
        return configuration.data_dir(self["data-dir"])

    @functools.cached_property
    def settings(self) -> configuration.Config:
        return configuration.load(Path(self["config"]) if self["config"] else None)

    def key_store(self) -> KeyStore:
        """The keys of the store the server uses: the data dir's, or PostgreSQL's."""
        return storage.key_store(self.settings, self.data_dir)

    def key_file(self) -> Path | None:
        """The data dir's key file, when keys are kept there (not in PostgreSQL)."""
        return None if self.settings.store.url else self.data_dir / KEYS_FILE


class KeysCreate(_DataDirOptions):
    synopsis = "--scope chat [--name NAME] [--config FILE] [--data-dir DIR]"
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
    synopsis = "[--config FILE] [--data-dir DIR] KEY_ID"

    def parseArgs(self, key_id: str) -> None:  # type: ignore[override]  # Twisted passes the arguments
        self["id"] = key_id


class KeysOptions(_Command):
    synopsis = "create|list|revoke [options]"
    longdesc = (
        "Open API keys are stored hashed in the data dir, or in PostgreSQL when --config sets "
        "[store] url; running servers see changes at once (within a second from PostgreSQL)."
    )
    subCommands = [
        ["create", None, KeysCreate, "Create an API key and print it (last line)."],
        ["list", None, _DataDirOptions, "List keys (never the keys themselves)."],
        ["revoke", None, KeysRevoke, "Revoke a key by its id."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose create, list or revoke")


class DevicesChange(_AnyOrder, _DataDirOptions):
    synopsis = "[--data-dir DIR] [--config FILE] CODE|DEVICE_ID"

    def parseArgs(self, which: str) -> None:  # type: ignore[override]  # Twisted passes the arguments
        self["which"] = which


class DevicesOptions(_Command):
    synopsis = "list|approve|revoke|reboot [options]"
    longdesc = (
        "xiaozhi-esp32 boards that asked this server's OTA endpoint (docs/devices.md), kept in the data dir, "
        "or in PostgreSQL when --config sets [store] url. A new board shows a six-digit code: approve it by "
        "that code; a revoked board's open socket is closed within a second (at once on every node with "
        "[cluster] redis), and it is refused from then on."
    )
    subCommands = [
        ["list", None, _DataDirOptions, "List boards: Device-Id, state, code, board."],
        ["approve", None, DevicesChange, "Let a board in, by its code or Device-Id."],
        ["revoke", None, DevicesChange, "Shut a board out, by its code or Device-Id."],
        ["reboot", None, DevicesChange, "Restart a connected board (the firmware's system reboot)."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose list, approve, revoke or reboot")


class TokenOptions(_DataDirOptions):
    synopsis = "--username NAME [--ttl SECONDS] [--link [--url URL]] [--config FILE] [--data-dir DIR]"
    optFlags = [["link", None, "Print a one-time login link for the browser page instead (see: livetx open)."]]
    optParameters: list[list[Any]] = [
        ["username", "u", None, "Whose token it is."],
        # No -t: that is --token in say and talk.
        ["ttl", None, 86400.0, "Seconds until it expires (a --link: always 5 minutes, one use).", float],
        ["url", None, DEFAULT_PAGE, "With --link: the running server's page address."],
    ]

    def postOptions(self) -> None:
        if self["link"] and not self["username"]:
            self["username"] = DEFAULT_USERNAME
        if not self["username"]:
            raise usage.UsageError("--username is required")
        username, problem = resolve_username(self["username"])
        if username != self["username"]:  # the server would refuse it (BAD_USER)
            raise usage.UsageError(f"{problem or 'Invalid username'}: {self['username']!r}")


class OpenOptions(TokenOptions):
    synopsis = "[--username NAME] [--url URL] [--config FILE] [--data-dir DIR]"
    longdesc = ("Print a link that signs the browser page in as USERNAME (default: web): it works once, "
                "within 5 minutes, for the running server using this data dir (or config's secret).")

    def postOptions(self) -> None:
        self["link"] = True
        super().postOptions()


class _TurnOptions(_AnyOrder):
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


class DevClusterOptions(_Command):
    synopsis = "DIR"
    longdesc = (
        "Start a throwaway PostgreSQL and Redis in DIR on free loopback ports (Debian's postgresql and "
        "redis-server packages; no sudo, no system cluster), print and write DIR/livetx.toml pointing at "
        "them, and stop them on Ctrl-C or SIGTERM. For trying [store] url and [cluster] redis on one machine."
    )

    def parseArgs(self, directory: str) -> None:  # type: ignore[override]  # Twisted passes the arguments
        self["dir"] = directory


class Options(_Command):
    synopsis = "COMMAND [options]"
    longdesc = (
        "Credentials for livetx clients, a client, and a throwaway PostgreSQL and Redis to try several "
        "processes on. The server itself runs as: twistd -n live"
    )
    subCommands = [
        ["keys", None, KeysOptions, "Manage Open API keys."],
        ["devices", None, DevicesOptions, "Approve or revoke xiaozhi-esp32 boards."],
        ["token", None, TokenOptions, "Print a dashboard JWT for the Live API (last line)."],
        ["open", None, OpenOptions, "Print a one-time login link for the browser page (last line)."],
        ["say", None, SayOptions, "Send a text turn to a server and print the reply (--out saves its audio)."],
        ["talk", None, TalkOptions, "Send a WAV file as a voice turn and print the reply (--out saves its audio)."],
        ["dev-cluster", None, DevClusterOptions, "Run a PostgreSQL and a Redis to try several processes on."],
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
    store = options.key_store()
    path = options.key_file()
    existed = path is None or path.exists()
    record, key = store.create(options["scopes"], options["name"])
    if path is not None:
        _say_if_created("key store", path, existed)
    print(f"created key {record.id} ({record.name or 'unnamed'}) with scopes {', '.join(record.scopes)}")
    print("store it now; it cannot be shown again:")
    print(key)
    return 0


def keys_list(options: _DataDirOptions) -> int:
    store = options.key_store()
    path = options.key_file()
    if path is not None and not path.exists():
        print(f"livetx: no key store at {path} (is that the server's data dir?)", file=sys.stderr)
    print(f"{'id':8}  {'prefix':8}  {'name':16}  {'scopes':14}  {'created':25}  revoked")
    for r in store.list():
        print(f"{r.id:8}  {r.prefix:8}  {(r.name or '-'):16}  {','.join(r.scopes):14}  "
              f"{r.created_at:25}  {r.revoked_at or '-'}")
    return 0


def keys_revoke(options: KeysRevoke) -> int:
    store = options.key_store()
    if store.revoke(options["id"]):
        print(f"revoked key {options['id']}")
        redis = options.settings.cluster.redis
        if redis:  # every node closes the key's sockets now, not at its next key refresh
            from livetx.cluster.revocation import announce

            try:
                nodes = announce(redis, options["id"])
            except Exception as e:  # redis-py's errors: the key is revoked, the sockets stay
                print(f"livetx: revoked, but could not tell the servers over Redis: {e}", file=sys.stderr)
                return 1
            print(f"told {nodes} server process(es), which close its sockets")
        return 0
    where = options.key_file() or "the configured store"
    print(f"livetx: no active key with id {options['id']!r} in {where}", file=sys.stderr)
    return 1


def _registry(options: _DataDirOptions) -> Any:
    """The boards of the store the server uses: the data dir's file, or PostgreSQL's table."""
    from livetx.devices.registry import open_registry

    url = options.settings.store.url
    if url:
        storage.check(options.settings)
    return open_registry(url, options.data_dir)


def devices_list(options: _DataDirOptions) -> int:
    registry = _registry(options)
    devices = registry.list()
    if not devices:
        print(f"livetx: no boards have asked yet ({registry.where})", file=sys.stderr)
    print(f"{'device id':17}  {'state':8}  {'code':6}  board")
    for d in devices:
        print(f"{d.device_id:17}  {d.state:8}  {d.code:6}  {d.board or '-'}")
    return 0


def _changed(options: DevicesChange, change: Callable[[Any, str], Any], done: str) -> Any:
    """The board named on the command line after ``change(registry, which)``, said; None if there is none."""
    device = change(_registry(options), options["which"])
    if device is None:
        print(f"livetx: no board with code or Device-Id {options['which']!r}", file=sys.stderr)
    else:
        print(done.format(device=device.device_id, user=device.username))
    return device


def devices_approve(options: DevicesChange) -> int:
    device = _changed(options, lambda r, which: r.set_state(which, "approved"), "approved {device} (user {user})")
    return 0 if device is not None else 1


def devices_revoke(options: DevicesChange) -> int:
    device = _changed(options, lambda r, which: r.set_state(which, "revoked"),
                      "revoked {device} (user {user}); its open socket closes within a second")
    if device is None:
        return 1
    redis = options.settings.cluster.redis
    if redis:  # every node closes the board's socket now, not at its next look at the registry
        from livetx.cluster.revocation import DEVICES, announce

        try:
            nodes = announce(redis, device.device_id, channel=DEVICES)
        except Exception as e:  # redis-py's errors: the board is revoked, its socket closes at the next look
            print(f"livetx: revoked, but could not tell the servers over Redis: {e}", file=sys.stderr)
            return 1
        print(f"told {nodes} server process(es), which close its socket")
    return 0


def devices_reboot(options: DevicesChange) -> int:
    device = _changed(options, lambda r, which: r.ask_reboot(which),
                      "asked the server to reboot {device}: sent within a second if it is connected")
    return 0 if device is not None else 1


def token(options: TokenOptions) -> int:
    fresh = storage.secret_to_create(options.settings, options.data_dir)
    secret = storage.jwt_secret(options.settings, options.data_dir)
    if fresh is not None:
        _say_if_created("JWT secret", fresh, existed=False)
    if options["link"]:  # livetx open, livetx token --link
        print(f"sign the browser page in as {options['username']} (one use, within {LINK_SECONDS / 60:.0f} minutes):")
        print(link_url(options["url"], issue_link_code(secret, options["username"])))
        return 0
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


def dev_cluster(options: DevClusterOptions) -> int:
    from livetx.cluster import local

    try:
        local.serve(Path(options["dir"]), sys.stdout)
    except (local.Missing, RuntimeError, OSError) as e:  # one line: what failed, and why
        print(f"livetx: dev-cluster: {e}", file=sys.stderr)
        return 1
    return 0


#: (command, subcommand) → handler; add a row to add a command.
HANDLERS: dict[tuple[str, str | None], Callable[..., int]] = {
    ("keys", "create"): keys_create,
    ("keys", "list"): keys_list,
    ("keys", "revoke"): keys_revoke,
    ("devices", "list"): devices_list,
    ("devices", "approve"): devices_approve,
    ("devices", "revoke"): devices_revoke,
    ("devices", "reboot"): devices_reboot,
    ("token", None): token,
    ("open", None): token,
    ("say", None): converse,
    ("talk", None): converse,
    ("dev-cluster", None): dev_cluster,
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
