"""The TOML configuration: one frozen dataclass per section, checked strictly.

A typo in a config file should stop start-up with one line naming the key,
rather than leave the server running on a default the operator did not mean.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import importlib.util
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping


#: Where the server and the ``livetx`` command keep keys and secrets by default.
DEFAULT_DATA_DIR = "livetx-data"
#: Names the data dir for the server and every ``livetx`` command when ``--data-dir`` does not.
DATA_DIR_VARIABLE = "LIVETX_DATA_DIR"
#: What ``--help`` says of the default.
DATA_DIR_HELP = f"default: ${DATA_DIR_VARIABLE}, else ./{DEFAULT_DATA_DIR}"


def data_dir(given: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """``--data-dir``, else ``$LIVETX_DATA_DIR``, else ``./livetx-data``, made absolute.

    One rule for the server and every command: a token made in another working
    directory would otherwise come from a fresh secret the server never sees.
    """
    environ = os.environ if environ is None else environ
    chosen = given or environ.get(DATA_DIR_VARIABLE) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


class ConfigError(ValueError):
    """A configuration problem, worded as one line for the operator."""


@dataclass(frozen=True)
class ServerConfig:
    """WebSocket limits; Autobahn's own defaults are unlimited, so we set every one."""

    max_message_bytes: int = 4 * 1024 * 1024
    max_frame_bytes: int = 4 * 1024 * 1024
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    ping_interval: float = 20.0
    ping_timeout: float = 10.0
    max_upload_bytes: int = 10 * 1024 * 1024
    #: Hardening (see docs/security.md); 0 turns a limit off.
    max_frames_per_second: float = 200.0
    max_connections_per_user: int = 8
    max_connections_per_key: int = 64
    idle_timeout: float = 3600.0
    max_send_buffer_bytes: int = 8 * 1024 * 1024
    shutdown_grace: float = 10.0
    #: Origins the browser (JWT) endpoints accept besides their own host; "*" accepts any.
    allowed_origins: list[str] = field(default_factory=list)
    failed_auth_per_minute: int = 10
    #: Open connections from one remote address, of every kind (0: no limit).
    max_connections_per_address: int = 128
    #: Apply ``max_connections_per_address`` to loopback too (a local proxy, tests and benchmarks come from there).
    limit_loopback: bool = False
    #: Negotiate permessage-deflate with clients that offer it (small windows; see docs/security.md).
    compression: bool = False


@dataclass(frozen=True)
class AuthConfig:
    """Where dashboard-style JWTs get their HS256 secret."""

    jwt_secret: str | None = field(default=None, repr=False)


OPENAI_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class ServiceConfig:
    """What every OpenAI-compatible service needs: where, with which key, how patiently."""

    base_url: str = OPENAI_URL
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0


@dataclass(frozen=True)
class LLMConfig(ServiceConfig):
    """The chat model that writes the replies."""

    provider: Literal["openai", "echo"] = "echo"
    model: str = "gpt-4o-mini"
    timeout: float = 60.0
    system_prompt: str = (
        "You are a friendly voice assistant. Answer in a few short spoken sentences."
    )
    history_turns: int = 20
    #: Of those turns, only the newest that fit in this many bytes are sent (and kept for sending).
    context_bytes: int = 256 * 1024
    echo_delay: float = 0.0
    #: The model accepts images: chat attachments of type image/* are sent to it.
    vision: bool = False
    #: Talk mode: start the reply at the first short pause, before the end of turn (a
    #: session's ``speculative`` setting; livetx.live.speculation).
    speculative: bool = False


@dataclass(frozen=True)
class TTSConfig(ServiceConfig):
    """Text-to-speech for the reply, one request per sentence."""

    provider: Literal["espeak", "piper", "openai", "none"] = "espeak"
    #: OpenAI: the model name (default "tts-1"); Piper: the voice's .onnx file.
    model: str | None = None
    #: None: the engine's own default ("en-us" for eSpeak, "alloy" for OpenAI).
    voice: str | None = None
    #: OpenAI-compatible: the voices a session may pick (None: OpenAI's own for the model).
    voices: list[str] | None = None
    response_format: Literal["wav", "mp3", "opus", "aac", "flac"] = "wav"
    concurrency: int = 2
    #: eSpeak only: words per minute and pitch (0–100).
    rate: int = 175
    pitch: int = 50


@dataclass(frozen=True)
class STTConfig(ServiceConfig):
    """Speech-to-text for voice turns."""

    provider: Literal["whisper", "pocketsphinx", "openai", "none"] = "whisper"
    #: OpenAI: the model name (default "whisper-1"); Whisper: a model directory
    #: (default: the bundled base model).
    model: str | None = None
    language: str | None = None
    max_segment_seconds: float = 60.0
    #: PocketSphinx only: a JSGF grammar file, or phrases to spot, for exact commands.
    grammar: str | None = None
    keywords: list[str] | None = None
    #: PocketSphinx: segments decoded at once; Whisper: cores one decode may use.
    threads: int = 2
    #: Keep every segment as a WAV in the data dir (for debugging recognition).
    keep_audio: bool = False
    #: Whisper: load the model at start-up instead of on the first voice turn.
    preload: bool = False


@dataclass(frozen=True)
class MCPServerConfig:
    """One ``[[tools.mcp]]`` table: an MCP server whose tools the model may call (docs/tools.md)."""

    #: Prefix of its tools' names (``<name>_<tool>``); letters, digits, ``_`` and ``-``.
    name: str = ""
    #: stdio: the program livetx starts, its arguments, extra environment and working directory.
    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    cwd: str | None = None
    #: Streamable HTTP: the endpoint and extra request headers (``Authorization``).
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    #: The server's tool names the model is offered; None: all of them.
    allow: list[str] | None = None
    #: Seconds one call may run; None: ``[tools] timeout``.
    timeout: float | None = None


@dataclass(frozen=True)
class ToolsConfig:
    """Server-side tools the model may call (docs/tools.md); none unless named here."""

    #: Built-in (``clock``, ``calculator``) or installed (entry point group ``livetx.tools``) tools.
    enabled: list[str] = field(default_factory=list)
    #: Seconds one call may run before it is cancelled and reported as failed.
    timeout: float = 10.0
    #: Model rounds that may call tools; then the model must answer without them.
    max_rounds: int = 3
    #: A call still running this long makes the turn say ``filler`` (once a turn).
    filler_after_ms: int = 1500
    filler: str = "One moment."
    #: The ``clock`` tool's time zone (an IANA name).
    timezone: str = "UTC"
    #: MCP servers (``[[tools.mcp]]``), checked by :func:`check_mcp`.
    mcp: list[MCPServerConfig] = field(default_factory=list)


@dataclass(frozen=True)
class ClusterConfig:
    """Several processes or machines serving as one (docs/deployment.md "Several machines")."""

    #: ``redis://[:PASSWORD@]HOST:PORT/DB``; unset, everything stays in this process.
    redis: str | None = None
    #: Resume (docs/protocol-extensions.md): how long, and how many, frames of a session are kept.
    resume_seconds: float = 120.0
    resume_frames: int = 2000
    #: Bytes of frames kept per session, and over the sessions of one API key (or token user).
    resume_session_bytes: int = 8 * 1024 * 1024
    resume_quota_bytes: int = 32 * 1024 * 1024
    #: A larger frame is kept as an ``omitted`` marker (a ``user_msg`` echoing a long text).
    resume_frame_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class StoreConfig:
    """Where conversations, sessions, attachments' records and API keys are kept."""

    #: None: SQLite in the data dir. "postgresql://USER:PASSWORD@HOST:PORT/DB": PostgreSQL,
    #: shared by every process and node. ``LIVETX_STORE_URL`` overrides it.
    url: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TelephonyConfig:
    """Phone calls through carriers' media streams (docs/telephony.md); off until a carrier is named."""

    #: The carriers whose stream endpoints are served (``/telephony/<carrier>/stream``).
    carriers: list[Literal["twilio", "telnyx", "plivo", "vonage"]] = field(default_factory=list)
    #: The server's address as the carrier reaches it (``https://voice.example.com``): the
    #: webhook's signature covers it and the stream URL is made from it. Unset: from the request.
    public_url: str | None = None
    #: Twilio's auth token, which signs its webhook requests; or ``LIVETX_TWILIO_AUTH_TOKEN``.
    twilio_auth_token: str | None = field(default=None, repr=False)
    #: Telnyx's public key (Base64, from the portal), which checks its signed requests; or
    #: ``LIVETX_TELNYX_PUBLIC_KEY``. Set, Telnyx's TeXML webhook is served.
    telnyx_public_key: str | None = None
    #: Plivo's auth token, which signs its answer URL requests; or ``LIVETX_PLIVO_AUTH_TOKEN``. Set, it is served.
    plivo_auth_token: str | None = field(default=None, repr=False)
    #: Vonage's signature secret, which signs its webhooks' JWT; or ``LIVETX_VONAGE_SIGNATURE_SECRET``. Set, served.
    vonage_signature_secret: str | None = field(default=None, repr=False)
    #: How long the call token the webhook hands out stays valid (the stream starts within a second).
    token_seconds: float = 30.0
    #: Keypad digits: ``text`` tells the model what was pressed; ``ignore`` drops them.
    dtmf: Literal["text", "ignore"] = "text"
    #: Digits pressed within this long of each other are sent as one message.
    dtmf_wait_ms: int = 1000
    #: Caller number → username (``"+15551234567" = "alice"``); unlisted callers are their number.
    usernames: dict[str, str] = field(default_factory=dict)
    #: Turn-taking settings for every call, as ``session_update`` takes them (``silence_ms = 500``).
    turn: dict[str, int | str] = field(default_factory=dict)

    def secret(self, carrier: str) -> str | None:
        """What checks ``carrier``'s webhook signatures (None: its webhook is not served)."""
        name = TELEPHONY_SECRETS.get(carrier)
        return None if name is None else getattr(self, name)


#: The setting that holds each carrier's webhook secret (or ``LIVETX_`` and its name in capitals).
TELEPHONY_SECRETS = {"twilio": "twilio_auth_token", "telnyx": "telnyx_public_key", "plivo": "plivo_auth_token",
                     "vonage": "vonage_signature_secret"}


#: The stock firmware's wake words (its wake word models' phrases) and the community servers' defaults.
WAKE_WORDS = ("你好小智", "你好小志", "小爱同学", "你好小鑫", "你好小新", "小美同学", "小龙小龙", "喵喵同学",
              "小滨小滨", "小冰小冰", "嘿你好呀", "Hi, ESP", "Hi, Lexin", "Alexa", "Hey, Jarvis", "Jarvis")


@dataclass(frozen=True)
class DevicesConfig:
    """xiaozhi-esp32 boards (docs/devices.md): their OTA endpoint and WebSocket; off until enabled."""

    enabled: bool = False
    #: The server's address as boards reach it (``https://voice.example.com``): the WebSocket URL
    #: the OTA endpoint hands out is made from it. Unset: from the request's Host.
    public_url: str | None = None
    #: How long a board's WebSocket token lasts (the firmware asks again at every boot).
    token_days: float = 365.0
    #: The sample rate of the Opus the server sends (announced in its ``hello``).
    output_rate: Literal[8000, 12000, 16000, 24000, 48000] = 24000
    #: The binary framing the OTA answer asks boards to use (``websocket.version``): the firmware keeps
    #: it with the URL, so a board another server set to another version is set back.
    protocol_version: Literal[1, 2, 3] = 1
    #: Turn-taking settings in auto and realtime listening, as ``session_update`` takes them.
    turn: dict[str, int | str] = field(default_factory=dict)
    #: What ``listen`` ``detect`` may say that only wakes the board; other text is answered as a question.
    wake_words: list[str] = field(default_factory=lambda: list(WAKE_WORDS))
    #: Serial number → the HMAC key in that board's eFuse (hex): its activation approves it.
    hmac_keys: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """Everything a running server needs to know, after defaults and environment."""

    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    llm: LLMConfig = LLMConfig()
    tts: TTSConfig = TTSConfig()
    stt: STTConfig = STTConfig()
    tools: ToolsConfig = ToolsConfig()
    store: StoreConfig = StoreConfig()
    cluster: ClusterConfig = ClusterConfig()
    telephony: TelephonyConfig = TelephonyConfig()
    devices: DevicesConfig = DevicesConfig()


_SECTIONS: dict[str, type] = typing.get_type_hints(Config)

# Environment variables that may carry a secret instead of the config file.
_ENV_KEYS = {
    "llm": "LIVETX_LLM_API_KEY",
    "tts": "LIVETX_TTS_API_KEY",
    "stt": "LIVETX_STT_API_KEY",
}


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(tp: Any) -> str:
    """Say what an annotation accepts, in the words of the error message."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return "a list of " + _describe(typing.get_args(tp)[0]).removeprefix("a ") + "s"
    if origin is dict:
        return "a table of " + _describe(typing.get_args(tp)[1]).removeprefix("a ") + "s"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _check(value: Any, tp: Any) -> bool:
    """Whether a TOML value fits a dataclass annotation (the few kinds we use)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_check(value, arg) for arg in typing.get_args(tp) if arg is not type(None))
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_check(v, item) for v in value)
    if origin is dict:
        _, item = typing.get_args(tp)
        return isinstance(value, dict) and all(_check(v, item) for v in value.values())
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _build_section(name: str, cls: type, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in hints:
            raise ConfigError(f"[{name}] unknown key {key!r}")
        tp = hints[key]
        if not _check(value, tp):
            raise ConfigError(f"[{name}] {key} must be {_describe(tp)}, got {value!r}")
        values[key] = float(value) if tp is float else value
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(item := typing.get_args(tp)[0]):
            # An array of tables (``[[tools.mcp]]``): each checked like a section.
            values[key] = [_build_section(f"{name}.{key}", typing.cast(type, item), v) for v in value]
    section = cls(**values)
    if name == "cluster" and section.redis is not None:
        _check_redis_url(section.redis)
    for key in hints:
        bound = getattr(section, key)
        if isinstance(bound, (int, float)) and not isinstance(bound, bool) and bound < 0:
            raise ConfigError(f"[{name}] {key} must not be negative")
    return section


def unkeyed(config: Config) -> list[str]:
    """Warnings for hosted services configured without a key (their requests would all be refused).

    A service on this machine (``localhost``, a loopback address) often needs
    no key, so only services elsewhere are named."""
    from ipaddress import ip_address
    from urllib.parse import urlsplit

    warnings = []
    for name, variable in _ENV_KEYS.items():
        section = getattr(config, name)
        if section.provider != "openai" or section.api_key:
            continue
        host = urlsplit(section.base_url).hostname or ""
        try:
            local = host == "localhost" or ip_address(host).is_loopback
        except ValueError:
            local = False
        if not local:
            warnings.append(f"[{name}] provider 'openai' at {section.base_url} has no api_key: set {variable} "
                            f"or [{name}] api_key, or every request to it will be refused")
    return warnings


def _check_redis_url(url: str) -> None:
    """Refuse a Redis URL the server could not use, at start-up rather than at the first socket."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as e:
        raise ConfigError(f"[cluster] redis is not a redis:// URL: {e}") from None
    database = parts.path.strip("/")
    if parts.scheme != "redis" or not parts.hostname or (database and not database.isdigit()):
        raise ConfigError(f"[cluster] redis must look like redis://HOST:PORT/DB, got {url!r}")


def from_mapping(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed TOML document and fill secrets from the environment."""
    environ = os.environ if environ is None else environ
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown section [{name}]")
        sections[name] = _build_section(name, _SECTIONS[name], table)
    config = Config(**sections)
    for name, variable in _ENV_KEYS.items():
        section = getattr(config, name)
        key = section.api_key or environ.get(variable)
        if key is None and name != "llm" and section.base_url == config.llm.base_url:
            # The same service usually takes the same key; never send it elsewhere.
            key = config.llm.api_key
        if key != section.api_key:
            config = dataclasses.replace(
                config, **{name: dataclasses.replace(section, api_key=key)}
            )
    config = _with_telephony(config, environ)
    url = environ.get("LIVETX_STORE_URL") or config.store.url
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("[store] url must start with postgresql:// (or be left out for SQLite)")
    if url != config.store.url:
        config = dataclasses.replace(config, store=StoreConfig(url=url))
    if config.tools.mcp:
        config = dataclasses.replace(config, tools=check_mcp(config.tools, environ))
    return config


def _with_telephony(config: Config, environ: Mapping[str, str]) -> Config:
    """The carriers' webhook secrets from the environment, and what a carrier needs to be served."""
    section = config.telephony
    secrets: dict[str, Any] = {name: getattr(section, name) or environ.get(f"LIVETX_{name.upper()}")
                               for name in TELEPHONY_SECRETS.values()}
    if "twilio" in section.carriers and not secrets["twilio_auth_token"]:
        raise ConfigError("[telephony] twilio needs twilio_auth_token (or LIVETX_TWILIO_AUTH_TOKEN) "
                          "to check its webhook's signatures")
    key = secrets["telnyx_public_key"]
    if key is not None and len(_base64(key) or b"") != 32:
        raise ConfigError("[telephony] telnyx_public_key must be the Base64 Ed25519 public key from the Telnyx portal")
    if section.carriers and config.tts.provider != "none" and config.tts.response_format != "wav":
        raise ConfigError("[telephony] calls need WAV speech: set [tts] response_format = \"wav\"")
    url = section.public_url
    if url is not None and (not url.startswith(("https://", "http://")) or "?" in url or "#" in url):
        raise ConfigError(f"[telephony] public_url must be an http(s) URL like https://voice.example.com, got {url!r}")
    changed = {name: value for name, value in secrets.items() if value != getattr(section, name)}
    if changed:
        config = dataclasses.replace(config, telephony=dataclasses.replace(section, **changed))
    return config


def _base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


#: An MCP server's name: short enough to leave room for its tools' names within 64 characters.
_MCP_NAME = re.compile(r"^[A-Za-z0-9-]{1,32}$")
#: ``${NAME}`` in an ``env`` or ``headers`` value is taken from livetx's environment.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_mcp(tools: ToolsConfig, environ: Mapping[str, str]) -> ToolsConfig:
    """``[[tools.mcp]]`` checked, with ``${NAME}`` filled in from ``environ``; or one line saying why not.

    Names have no ``_``, so ``<server>_<tool>`` always says which server a
    tool is on and no two servers' tools can share a name.
    """
    import shutil
    from urllib.parse import urlsplit

    servers, names = [], set(tools.enabled)
    for server in tools.mcp:
        where = f"[[tools.mcp]] {server.name!r}" if server.name else "[[tools.mcp]]"
        if not _MCP_NAME.match(server.name):
            raise ConfigError(f"{where} needs a name of 1 to 32 letters, digits or -, got {server.name!r}")
        if server.name in names:
            raise ConfigError(f"{where}: the name is used twice")
        names.add(server.name)
        if (server.command is None) == (server.url is None):
            raise ConfigError(f"{where} needs either command (stdio) or url (Streamable HTTP), not both")
        if server.url is not None:
            parts = urlsplit(server.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"{where} url must be an http:// or https:// URL, got {server.url!r}")
            if server.args or server.env or server.cwd:
                raise ConfigError(f"{where}: args, env and cwd are for a command, not a url")
        if server.command is not None:
            if server.headers:
                raise ConfigError(f"{where}: headers are for a url, not a command")
            if shutil.which(server.command) is None:
                raise ConfigError(f"{where} command {server.command!r} is not an executable on PATH")
            if server.cwd is not None and not Path(server.cwd).expanduser().is_dir():
                raise ConfigError(f"{where} cwd {server.cwd!r} is not a directory")
        if server.timeout is not None and server.timeout <= 0:
            raise ConfigError(f"{where} timeout must be more than 0")
        servers.append(dataclasses.replace(
            server, env=_filled(where, "env", server.env, environ),
            headers=_filled(where, "headers", server.headers, environ),
        ))
    return dataclasses.replace(tools, mcp=servers)


def _filled(where: str, key: str, values: dict[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    def variable(match: re.Match[str]) -> str:
        if match[1] not in environ:
            raise ConfigError(f"{where} {key} names ${{{match[1]}}}, which is not set in the environment")
        return environ[match[1]]

    return {k: _VARIABLE.sub(variable, v) for k, v in values.items()}


def require(what: str, modules: tuple[str, ...], package: str) -> None:
    """One line naming what to install, rather than a ``ModuleNotFoundError`` deep in a traceback.

    Looks the modules up without importing them (``None`` in ``sys.modules`` counts as missing)."""
    if not all(importlib.util.find_spec(module) is not None for module in modules):
        raise ConfigError(f"{what} needs: pip install '{package}'")


#: Settings whose code is an extra of the package: (section, key) → (modules, what to install).
EXTRAS: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("cluster", "redis"): (("txredisapi", "redis"), "livetx[cluster]"),
    ("store", "url"): (("psycopg", "psycopg_pool"), "livetx[postgres]"),
}


def check_extras(config: Config) -> None:
    """Stop with one line when a setting needs an extra that is not installed."""
    for (section, key), (modules, package) in EXTRAS.items():
        if getattr(getattr(config, section), key):
            require(f"[{section}] {key}", modules, package)


def load(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; ``None`` means all defaults.

    Every reader of the file (the server and each ``livetx`` command) comes
    here, so a setting whose extra is missing stops each of them with the
    same line."""
    data: dict[str, Any] = {}
    try:
        if path is not None:
            with open(path, "rb") as f:
                data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    config = from_mapping(data, environ)
    check_extras(config)
    return config
