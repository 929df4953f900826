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
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from livetx import __version__, config as configuration
from livetx.chat.service import ChatService
from livetx.deferreds import waiter_for
from livetx.live.journal import Journals, MemoryJournals
from livetx.metrics import ServerMetrics
from livetx.providers.factory import build_pipeline, check as check_engines
from livetx.providers.openai import make_http_client
from livetx.storage import check as check_store, jwt_secret, open_storage
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
        ["data-dir", "d", configuration.DEFAULT_DATA_DIR, "Directory for keys, secrets and data (created if missing)."],
        ["config", "c", None, "TOML configuration file (see docs/configuration.md)."],
        ["workers", "w", 1, "Worker processes sharing the --listen sockets (more than 1 needs [cluster] redis).", int],
        ["metrics-dir", None, None, "Internal: where --workers' processes share their metrics."],
    ]
    optFlags = [
        ["conformance-echo", None, "Test only: also serve an echo socket at /conformance/echo."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["adopt"] = []

    def opt_adopt(self, spec: str) -> None:
        """Internal (--workers): serve an inherited listening socket, FD:FAMILY."""
        self["adopt"].append(spec)

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted endpoint, e.g. tcp:6185 or ssl:8443:privateKey=key.pem (repeatable)."""
        from twisted.internet import reactor  # twistd has installed its reactor by now

        try:
            # Parsing builds the endpoint, so a missing ssl: key file fails here.
            endpoints.serverFromString(reactor, description)
        except Exception as e:
            raise usage.UsageError(f"bad --listen endpoint {description!r}: {e}") from None
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_version(self) -> None:
        """Print the livetx version and exit."""
        print(f"livetx {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        data_dir = Path(self["data-dir"]).expanduser().resolve()
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
            self._check_workers()
            check_store(self["settings"])
        except configuration.ConfigError as e:
            # One line naming the problem, not a page of usage text.
            sys.stderr.write(f"livetx: {e}\n")
            raise SystemExit(1)

    def _check_workers(self) -> None:
        workers = self["workers"]
        if workers < 1:
            raise configuration.ConfigError("--workers must be 1 or more")
        if workers > 1 and not self["settings"].cluster.redis:
            raise configuration.ConfigError(
                f"--workers {workers} needs [cluster] redis in the config file: the workers share limits, "
                "bound sessions and resume through it")
        if workers > 1:
            from livetx.cluster.workers import unshareable

            for description in self["listen"]:
                if unshareable(description):
                    raise configuration.ConfigError(
                        f"--workers cannot share --listen {description!r}: use tcp: or unix: "
                        "(terminate TLS at the proxy in front)")


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


class _Adopted(Service):
    """A listening socket inherited from the ``--workers`` supervisor."""

    def __init__(self, reactor: Any, spec: str, factory: Any) -> None:
        self._reactor, self._spec, self._factory = reactor, spec, factory
        self._port: Any = None

    def startService(self) -> None:
        from livetx.cluster.workers import adopt

        super().startService()
        self._port = adopt(self._reactor, self._spec, self._factory)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return self._port.stopListening() if self._port is not None else None


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the server: listening ports, the site behind them, and shutdown hooks."""
    if reactor is None:
        from twisted.internet import reactor
    settings: configuration.Config = options["settings"]
    data_dir: Path = options["data-dir"]
    if options["workers"] > 1:  # this process only supervises; the workers serve
        from livetx.cluster.workers import Supervisor

        jwt_secret(settings, data_dir)  # made once here, or each worker would race to make its own
        args = ["--data-dir", str(data_dir), *(["--config", options["config"]] if options["config"] else [])]
        args += ["--conformance-echo"] if options["conformance-echo"] else []
        return Supervisor(reactor, options["listen"], options["workers"], args)

    storage = open_storage(settings, data_dir, reactor)
    store, keys, secret = storage.store, storage.keys, storage.secret
    http, pool = make_http_client(reactor)
    pipeline = build_pipeline(settings, http, reactor, data_dir)

    root = MultiService()
    connections = ConnectionTracker(reactor, settings.server.shutdown_grace)
    connections.setName("connections")
    # One failed-auth count per address across endpoints; the origin check is
    # for the browser (JWT) endpoints.
    failures = FailedAuth(settings.server.failed_auth_per_minute, reactor)
    relay = None
    probes = dict(storage.probes)
    resume = settings.cluster
    journals: Journals = MemoryJournals(reactor, resume.resume_seconds, resume.resume_frames)
    if settings.cluster.redis:  # imported only when configured: a lone server loads no Redis client
        from livetx.cluster.node import ClusterNode

        node = ClusterNode(settings.cluster.redis, reactor, after=connections.drained)
        node.setName("cluster")
        relay = node.relay
        connections.shared = node.slots
        failures = node.failed_auth(settings.server.failed_auth_per_minute)
        node.on_revoked(connections.revoked)
        refresh = getattr(keys, "refresh", None)  # PostgreSQL's key cache: refuse the key at once too
        if refresh is not None:
            node.on_revoked(lambda _: refresh())
        probes["redis"] = node.ping
        journals = node.journals(resume.resume_seconds, resume.resume_frames)
    chat = ChatService(
        store=store, llm=pipeline.llm, clock=reactor,
        system_prompt=settings.llm.system_prompt, history_turns=settings.llm.history_turns,
        vision=settings.llm.vision, relay=relay,
    )
    metrics = ServerMetrics()
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
            # Without Redis a node still serves turns (see docs/deployment.md): degraded, not unready.
            **ops_routes(metrics, settings, reactor, lambda: connections.draining, probes, optional=("redis",)),
            **page_routes(),
        },
        metrics=metrics,
        echo=bool(options["conformance-echo"]),
        journals=journals,
    )
    # Stopped in reverse order: ports, open sockets (running turns get
    # [server] shutdown_grace to finish), then, once they are drained, the
    # store (after its queued writes) and the upstream connection pool.
    _Closing(pool, "closeCachedConnections", after=connections.drained).setServiceParent(root)
    _Closing(store, after=connections.drained).setServiceParent(root)
    if settings.cluster.redis:
        node.setServiceParent(root)  # stopped after the sockets, which give their slots back
    connections.setServiceParent(root)
    for service in storage.services:
        service.setServiceParent(root)
    _FreezeStartup(reactor).setServiceParent(root)
    if options["adopt"]:  # a worker of --workers: the supervisor holds the sockets
        from livetx.cluster.worker_metrics import SharedMetrics
        from livetx.cluster.workers import as_worker

        as_worker(reactor)
        for spec in options["adopt"]:
            _Adopted(reactor, spec, site).setServiceParent(root)
        SharedMetrics(metrics, Path(options["metrics-dir"]), reactor).setServiceParent(root)
    else:
        for description in options["listen"]:
            strports.service(description, site, reactor=reactor).setServiceParent(root)
    _log.info(
        "livetx {version}: model {llm}, speech {tts}, transcription {stt}, data in {data_dir}",
        version=__version__,
        llm=settings.llm.provider,
        tts=settings.tts.provider,
        stt=settings.stt.provider,
        data_dir=str(data_dir),
    )
    return root
