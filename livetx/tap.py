"""``twistd live``: command-line options and the service tree.

Shaped like ``twisted.web.tap``: a repeatable ``--listen`` taking endpoint
strings, validation in ``opt_*`` and ``postOptions``, and a ``makeService``
that builds a ``MultiService`` and takes the reactor as a parameter.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LoggingFile
from twisted.python import usage

from livetx import __version__, config as configuration
from livetx.auth.keys import KeyStore
from livetx.auth.tokens import SECRET_FILE, load_or_create_secret
from livetx.chat.service import ChatService
from livetx.deferreds import waiter_for
from livetx.metrics import ServerMetrics
from livetx.providers.factory import WarmUp, build_pipeline, check as check_engines
from livetx.providers.openai import make_http_client
from livetx.store.sqlite import SQLiteStore
from livetx.web.admission import FailedAuth, api_key_gate, guarded, jwt_gate
from livetx.web.http_api import api_routes
from livetx.web.ops import ops_routes
from livetx.web.pages import page_routes
from livetx.web.protocol import ConnectionTracker
from livetx.web.site import build_site

_log = Logger()

DEFAULT_LISTEN = "tcp:6185"


class Options(usage.Options):
    """Options for ``twistd live``."""

    synopsis = "[--listen ENDPOINT]... [--data-dir DIR] [--config FILE]"
    longdesc = (
        "Serve the AstrBot Live API (WebSocket voice and text conversations). "
        "With no config file, replies come from the offline echo model."
    )
    optParameters = [
        ["data-dir", "d", None,
         f"Directory for keys, secrets and data, created if missing ({configuration.DATA_DIR_HELP})."],
        ["config", "c", None, "TOML configuration file (see docs/configuration.md)."],
    ]
    optFlags = [
        ["conformance-echo", None,
         "FOR TESTS ONLY, never in production: also serve an unauthenticated echo socket at "
         "/conformance/echo for the Autobahn conformance suite."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted endpoint, e.g. ssl:8443:privateKey=key.pem (repeatable; default: tcp:6185)."""
        from twisted.internet import reactor  # twistd has installed its reactor by now

        try:
            # Parsing builds the endpoint, so a missing ssl: key file fails here.
            endpoints.serverFromString(reactor, description)
        except Exception as e:
            stop_startup(f"bad --listen endpoint {description!r}: {e}")
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_version(self) -> None:
        """Print the livetx version and exit."""
        print(f"livetx {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        data_dir = configuration.data_dir(self["data-dir"])
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise usage.UsageError(f"cannot create --data-dir {str(data_dir)!r}: {e.strerror}") from None
        self["data-dir"] = data_dir
        try:
            self["settings"] = configuration.load(
                Path(self["config"]) if self["config"] else None
            )
            check_engines(self["settings"])
        except configuration.ConfigError as e:
            stop_startup(str(e))


def stop_startup(message: str) -> NoReturn:
    """End start-up with one line on stderr and exit status 1, not a traceback or the usage text.

    By the time ports are opened twistd has sent ``sys.stderr`` into its log,
    so the line goes to the process's own stderr and to the log (which is all a
    daemon has).
    """
    stream = sys.stderr
    if isinstance(stream, LoggingFile):
        _log.error("livetx: {message}", message=message)
        stream = sys.__stderr__
    if stream is not None:
        stream.write(f"livetx: {message}\n")
        stream.flush()
    raise SystemExit(1)


class _Listening(StreamServerEndpointService):
    """One ``--listen`` endpoint; failing to open it (port taken, out of range, no permission) is one line."""

    #: Set as ``strports.service`` sets it: a port that cannot be opened raises
    #: from ``privilegedStartService`` rather than being logged as a traceback.
    _raiseSynchronously = True

    def __init__(self, description: str, factory: Any, reactor: Any) -> None:
        super().__init__(endpoints.serverFromString(reactor, description), factory)
        self.description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            reason = e.socketError if isinstance(e, CannotListenError) else e
            stop_startup(f"cannot listen on {self.description}: {reason}")


class _Closing(Service):
    """Closes something that holds resources (a store, a pool) when the server stops."""

    def __init__(self, resource: Any, close: str = "close", after: Deferred[None] | None = None) -> None:
        self._close = getattr(resource, close)
        self._after = after

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._after is None:
            return self._close()
        return waiter_for(self._after).addCallback(lambda _: self._close())


class _FreezeStartup(Service):
    """Once the server runs, take what start-up made out of the cycle collector's sight.

    Modules, configuration and the site live as long as the process, yet
    every full collection walked them again: 30-40 ms each under load, a
    stall that every turn in flight waited through (benchmarks/RESULTS.md).
    Garbage is collected first, so nothing unreachable is kept for good;
    then glibc hands back the heap pages that start-up freed (about a
    megabyte of an idle server's resident memory), where it can.
    A server started inside a process whose reactor already runs (tests,
    an embedding program) leaves that process's collector alone.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        if not self._reactor.running:
            self._reactor.callWhenRunning(self._freeze)

    @staticmethod
    def _freeze() -> None:
        gc.collect()
        gc.freeze()
        _trim_heap()


def _trim_heap() -> None:
    """Return free heap memory to the system (glibc's ``malloc_trim``; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: musl, macOS
        return
    trim(0)


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the server: listening ports, the site behind them, and shutdown hooks."""
    if reactor is None:
        from twisted.internet import reactor
    settings: configuration.Config = options["settings"]
    data_dir: Path = options["data-dir"]

    fresh = not settings.auth.jwt_secret and not (data_dir / SECRET_FILE).exists()
    secret = load_or_create_secret(data_dir, settings.auth.jwt_secret)
    if fresh:
        _log.warn("created a new JWT secret at {path}: tokens made for another data dir will be refused",
                  path=str(data_dir / SECRET_FILE))
    http, pool = make_http_client(reactor)
    pipeline = build_pipeline(settings, http, reactor, data_dir)

    root = MultiService()
    store = SQLiteStore(data_dir)
    connections = ConnectionTracker(reactor, settings.server.shutdown_grace)
    connections.setName("connections")
    keys = KeyStore(data_dir)
    chat = ChatService(
        store=store, llm=pipeline.llm, clock=reactor,
        system_prompt=settings.llm.system_prompt, history_turns=settings.llm.history_turns,
        vision=settings.llm.vision,
    )
    metrics = ServerMetrics()
    # One failed-auth count per address across endpoints; the origin check is
    # for the browser (JWT) endpoints.
    failures = FailedAuth(settings.server.failed_auth_per_minute, reactor)
    origins = settings.server.allowed_origins
    site = build_site(
        gates={
            "jwt_live": guarded(jwt_gate(secret, "live"), failures=failures, origins=origins),
            "jwt_unified": guarded(jwt_gate(secret, None), failures=failures, origins=origins),
            "api_key": guarded(api_key_gate(keys), failures=failures, notice=True),
        },
        pipeline=pipeline,
        limits=settings.server,
        connections=connections,
        clock=reactor,
        chat=chat,
        store=store,
        routes={
            **api_routes(keys, store, chat, settings.server.max_upload_bytes, failures),
            **ops_routes(metrics, settings, reactor, lambda: connections.draining),
            **page_routes(),
        },
        metrics=metrics,
        echo=bool(options["conformance-echo"]),
    )
    # Stopped in reverse order: ports, open sockets (running turns get
    # [server] shutdown_grace to finish), then, once they are drained, the
    # store (after its queued writes) and the upstream connection pool.
    _Closing(pool, "closeCachedConnections", after=connections.drained).setServiceParent(root)
    _Closing(store, after=connections.drained).setServiceParent(root)
    connections.setServiceParent(root)
    _FreezeStartup(reactor).setServiceParent(root)
    WarmUp(pipeline, reactor).setServiceParent(root)
    for description in options["listen"]:
        _Listening(description, site, reactor).setServiceParent(root)
    _log.info(
        "livetx {version}: model {llm}, speech {tts}, transcription {stt}, data in {data_dir}",
        version=__version__,
        llm=settings.llm.provider,
        tts=settings.tts.provider,
        stt=settings.stt.provider,
        data_dir=str(data_dir),
    )
    return root
