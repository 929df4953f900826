"""The service graph: every long-lived part of a server, built and wired in one place.

The tap parses options and listens; everything between the configuration
and the site is made here, each part handed the collaborators it uses.
Shutdown order is part of the wiring: the parent stops its children in
reverse order, so the listening ports (added last, by the caller) stop
first, then the open sockets drain, then the store and the upstream pool
close.
"""

from __future__ import annotations

import ctypes
import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from livetx.auth.login_links import USED_FILE, FileUsedLinks, LoginLinks
from livetx.auth.revocation import KeyRevocations
from livetx.chat.service import ChatService
from livetx.config import Config
from livetx.deferreds import waiter_for
from livetx.domain import Engines
from livetx.fences.treq import make_http_client
from livetx.lastresort import EXIT_MARGIN, StoppingRoot
from livetx.metrics import ServerMetrics
from livetx.engines import build_engines
from livetx.storage import open_storage, secret_to_create
from livetx.store.conversation import live_memories
from livetx.web.admission import FailedAuth, api_key_gate, guarded, jwt_gate, key_looked_up
from livetx.web.connections import ConnectionTracker
from livetx.web.http_api import api_routes
from livetx.web.login import login_routes
from livetx.web.ops import ops_routes
from livetx.web.pages import page_ready, page_routes
from livetx.web.site import build_site
from livetx.web.voices import voice_routes
from livetx.web.sockets import memory_journals

_log = Logger()


@dataclass(frozen=True)
class Services:
    """What :func:`build_services` made: the parent service and the site to listen with."""

    root: MultiService
    site: Site
    #: The server's counts (``--workers`` share them between processes).
    metrics: ServerMetrics
    #: One-time login links for the browser page (the start-up log prints one).
    login: LoginLinks


def build_services(settings: Config, reactor: Any, data_dir: Path, *, echo: bool = False) -> Services:
    """Build the whole server but its listening ports, which the caller adds to ``root``."""
    fresh = secret_to_create(settings, data_dir)
    storage = open_storage(settings, data_dir, reactor)
    store, keys, secret = storage.store, storage.keys, storage.secret
    if fresh:
        _log.warn("created a new JWT secret at {path}: tokens made for another data dir will be refused",
                  path=str(fresh))
    http, pool = make_http_client(reactor)
    mcp = None
    if settings.tools.mcp:  # imported only when configured: no MCP SDK in a server without MCP servers
        from livetx.tools.mcp_servers import MCPTools

        mcp = MCPTools(settings.tools, reactor)
    engines = build_engines(settings, http, reactor, data_dir, mcp=mcp)
    metrics = ServerMetrics()
    node = None
    if settings.cluster.redis:  # imported only when configured: a lone server loads no Redis client
        from livetx.cluster.node import ClusterNode

        node = ClusterNode(settings.cluster.redis, reactor)
        node.setName("cluster")
    chat = ChatService(store=store, engines=engines, clock=reactor, relay=node.relay if node is not None else None)
    # Drains live, chat-socket and SSE turns alike when the server stops.
    connections = ConnectionTracker(reactor, settings.server.shutdown_grace, chat)
    connections.setName("connections")
    revocations = KeyRevocations(keys.revoked_ids, keys.active_ids, reactor)
    revocations.subscribe(connections.close_keys)
    # One failed-auth count per address across endpoints; the origin check is
    # for the browser (JWT) endpoints.
    failures = FailedAuth(settings.server.failed_auth_per_minute, reactor)
    probes = {**storage.probes, "page": page_ready}
    mcp_probes = mcp.probes() if mcp is not None else {}
    probes.update(mcp_probes)
    resume = settings.cluster
    journals = memory_journals(reactor, resume)
    if node is not None:  # limits, revocation, readiness and resume through Redis
        node.join(connections, keys)
        failures = node.failed_auth(settings.server.failed_auth_per_minute)
        shared = node.journals(resume)
        journals = lambda: shared  # noqa: E731
        probes["redis"] = node.ping
    origins = settings.server.allowed_origins
    # Redeemed login links: in Redis for a cluster, else in the data dir, which --workers share.
    used = node.used_links() if node is not None else FileUsedLinks(data_dir / USED_FILE, reactor)
    login = LoginLinks(secret, used)
    memories = live_memories(store)
    routes = {
        **api_routes(keys, store, chat, settings.server, failures, metrics, connections.hold),
        # Without Redis a node still serves turns (docs/deployment.md): degraded, not unready.
        **ops_routes(metrics, settings, reactor, lambda: connections.draining, probes,
                     optional=("redis", *mcp_probes)),
        **page_routes(),
        **login_routes(login, failures),
        **voice_routes(engines.tts),
    }
    if settings.telephony.carriers:  # imported only when configured
        from livetx.telephony.routes import telephony_routes

        routes.update(telephony_routes(settings, secret=secret, engines=engines, connections=connections,
                                       clock=reactor, metrics=metrics, memories=memories))
    #: Started after the store, stopped before it.
    watchers: list[Service] = []
    if settings.devices.enabled:  # imported only when configured
        from livetx.devices.routes import device_routes

        devices = device_routes(settings, secret=secret, data_dir=data_dir, engines=engines,
                                connections=connections, clock=reactor, metrics=metrics, memories=memories,
                                database=storage.database)
        routes.update(devices.routes)
        watchers.append(devices.watch)
        if node is not None:  # livetx devices revoke closes the board's sockets on every node at once
            from livetx.cluster.revocation import DEVICES

            node.on_revoked(devices.watch.publish, DEVICES)
    site = build_site(
        gates={
            "jwt_live": guarded(jwt_gate(secret, "live"), failures=failures, origins=origins),
            "jwt_unified": guarded(jwt_gate(secret, None), failures=failures, origins=origins),
            "api_key": key_looked_up(keys, guarded(api_key_gate(keys), failures=failures, notice=True)),
        },
        engines=engines,
        limits=settings.server,
        connections=connections,
        clock=reactor,
        chat=chat,
        memories=memories,
        routes=routes,
        metrics=metrics,
        echo=echo,
        journals=journals,
    )
    # Past grace and a margin a shutdown that hangs still ends, saying what it waited for.
    root = StoppingRoot(settings.server.shutdown_grace + EXIT_MARGIN, reactor)
    # Stopped in reverse order: (the caller's ports,) open sockets (running
    # turns get [server] shutdown_grace to finish), then, once they are
    # drained, the store (after its queued writes) and the upstream pool.
    Closing(pool.closeCachedConnections, after=connections.drained).setServiceParent(root)
    Closing(store.close, after=connections.drained).setServiceParent(root)
    if mcp is not None:  # its servers stop once running turns no longer call them
        Closing(mcp.close, after=connections.drained).setServiceParent(root)
    if node is not None:
        node.setServiceParent(root)  # leaves once the sockets have given their slots back
    connections.setServiceParent(root)
    for service in storage.services:  # PostgreSQL: refreshing each node's copy of the keys
        service.setServiceParent(root)
    revocations.setServiceParent(root)
    for watcher in watchers:
        watcher.setServiceParent(root)
    FreezeStartup(reactor).setServiceParent(root)
    WarmUp(engines, reactor).setServiceParent(root)
    return Services(root=root, site=site, metrics=metrics, login=login)


class Closing(Service):
    """Releases something that holds resources (a store, a pool) when the server stops."""

    def __init__(self, close: Callable[[], Any], after: Deferred[None] | None = None) -> None:
        self._close = close
        self._after = after

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._after is None:
            return maybeDeferred(self._close)
        return waiter_for(self._after).addCallback(lambda _: self._close())


class FreezeStartup(Service):
    """Once the server runs, take what start-up made out of the cycle collector's sight.

    Modules, configuration and the site live as long as the process, yet
    every full collection walked them again, a stall that every turn in
    flight waited through (benchmarks/RESULTS.md says how long).
    Garbage is collected first, so nothing unreachable is kept for good;
    then glibc hands back the heap pages that start-up freed, where it can,
    and is told to keep serving large blocks from ``mmap`` (see
    :func:`_return_large_blocks`). A server started inside a process whose
    reactor already runs (tests, an embedding program) leaves that process's
    collector and allocator alone.
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
        _glibc("malloc_trim", 0)
        _return_large_blocks()


#: glibc's ``mallopt`` parameter for the size from which a block gets its own ``mmap``.
M_MMAP_THRESHOLD = -3
#: glibc's initial threshold, kept fixed.
MMAP_THRESHOLD = 128 * 1024


def _return_large_blocks() -> None:
    """Keep glibc serving blocks of 128 KiB and more with ``mmap``, so that freeing them returns them.

    glibc starts so, but raises the threshold (up to 32 MiB) to the size of
    each such block freed: after one long text turn, the multi-megabyte
    strings of the next ones (the text, its echo, its JSON) come from the
    main heap, whose freed middle is never handed back, and RSS climbed by
    hundreds of MB a round under large turns (issue 27.2). Fixing the
    threshold is what ``MALLOC_MMAP_THRESHOLD_=131072`` does; an operator
    who set that (or another value) keeps their choice.
    """
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        _glibc("mallopt", M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _glibc(function: str, *args: int) -> None:
    """Call one of glibc's allocator functions; a no-op elsewhere (musl, macOS)."""
    try:
        call = getattr(ctypes.CDLL(None), function)
    except (OSError, AttributeError):
        return
    call(*args)


class WarmUp(Service):
    """Loads the engines that are slow to load (those with a ``warm()``) as the server starts.

    Otherwise the first reply would wait for a model to load, with nothing in
    the log to say why; now the log says what is loading and how long it took.
    """

    def __init__(self, engines: Engines, clock: Any) -> None:
        self._engines: list[Any] = [e for e in (engines.tts, engines.stt, engines.llm) if hasattr(e, "warm")]
        self._clock = clock

    def startService(self) -> None:
        super().startService()
        for engine in self._engines:
            name, started = getattr(engine, "name", type(engine).__name__), self._clock.seconds()
            _log.info("loading {engine}; replies wait for it", engine=name)

            def loaded(_: object, name: str = name, started: float = started) -> None:
                _log.info("{engine} loaded in {seconds:.1f} s", engine=name, seconds=self._clock.seconds() - started)

            def failed(failure: Failure, name: str = name) -> None:
                _log.error("{engine} failed to load: {why}", engine=name, why=failure.getErrorMessage())

            engine.warm().addCallbacks(loaded, failed)
