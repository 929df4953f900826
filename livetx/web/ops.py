"""Routes for whoever runs the server: ``/metrics``, ``/healthz`` and ``/readyz``.

Liveness only says the reactor answers. Readiness says the configured
engines and shared services (a PostgreSQL store) can work: offline engines
were checked at start-up (their modules and model files), an HTTP service
counts as reachable when a TCP connection to its host opens (no request is
sent, so a probe costs no tokens and needs no key), and a shared service
when its probe answers in time. Anyone may ask, so the answer is reused for
``READY_CACHE_SECONDS`` and one probe at a time runs: a flood of requests
opens no flood of upstream connections. A draining server is not ready.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, cast
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList, TimeoutError, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from livetx.config import Config
from livetx.deferreds import waiter_for
from livetx.metrics import ServerMetrics
from livetx.web.lazy import OnFirstRequest
from livetx.web.replies import finish_async, json_body

#: Seconds a readiness probe waits for each upstream service.
PROBE_TIMEOUT = 2.0
#: Seconds a readiness answer is reused before the upstream hosts are probed again.
READY_CACHE_SECONDS = 5.0


class Health(Resource):
    """``GET /healthz``: answered by the reactor thread, so a hung reactor fails it."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return json_body(request, 200, {"status": "ok"})


def _address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def probe(reactor: Any, host: str, port: int, timeout: float = PROBE_TIMEOUT) -> Deferred[None]:
    """Open and at once close a TCP connection; fails when the host is unreachable."""
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    def close(protocol: IProtocol) -> None:
        transport = cast(Protocol, protocol).transport
        assert transport is not None  # connect() fires once connected
        transport.loseConnection()

    return endpoint.connect(Factory.forProtocol(Protocol)).addCallback(close)


class Ready(Resource):
    """``GET /readyz``: 200 when every configured engine can be used, else 503."""

    isLeaf = True

    def __init__(
        self, settings: Config, reactor: Any, draining: Callable[[], bool] = lambda: False,
        probes: Mapping[str, Callable[[], Deferred[None]]] | None = None, optional: Collection[str] = (),
    ) -> None:
        super().__init__()
        self._settings = settings
        self._probes = dict(probes or {})
        self._optional = frozenset(optional)
        self._reactor = reactor
        self._draining = draining
        self._checks: dict[str, Any] | None = None
        self._checked_at = 0.0
        self._probing: Deferred[dict[str, Any]] | None = None

    def current(self) -> Deferred[dict[str, Any]]:
        """The last :meth:`check` if recent, else the one running, else a new one."""
        fresh = self._checks is not None and self._reactor.seconds() - self._checked_at < READY_CACHE_SECONDS
        if not fresh and self._probing is None:
            self._probing = self.check()
            self._probing.addCallback(self._remember)
        if self._probing is not None:
            return waiter_for(self._probing).addCallback(lambda _: self._known())
        return succeed(self._known())

    def _known(self) -> dict[str, Any]:
        assert self._checks is not None  # a check has finished before anyone reads it
        return self._checks

    def _remember(self, checks: dict[str, Any]) -> dict[str, Any]:
        self._checks, self._checked_at, self._probing = checks, self._reactor.seconds(), None
        return checks

    def check(self) -> Deferred[dict[str, Any]]:
        """Each engine's provider and whether it is usable; never names a key."""
        checks: dict[str, dict[str, Any]] = {}
        probes: list[Deferred[Any]] = []
        for kind in ("llm", "tts", "stt"):
            section = getattr(self._settings, kind)
            result: dict[str, Any] = {"provider": section.provider, "ok": True}
            checks[kind] = result
            if section.provider != "openai":
                continue  # offline engines were checked when the server started
            host, port = _address(section.base_url)
            result["upstream"] = f"{host}:{port}"

            def failed(_: Any, result: dict[str, Any] = result) -> None:
                result["ok"] = False
                result["error"] = f"cannot connect to {result['upstream']}"

            probes.append(probe(self._reactor, host, port).addErrback(failed))
        for name, check in self._probes.items():  # shared services: the database, Redis
            checks[name] = {"ok": True}
            probes.append(self._shared(check, checks[name]))
        return DeferredList(probes).addCallback(lambda _: checks)

    def _shared(self, check: Callable[[], Deferred[None]], result: dict[str, Any]) -> Deferred[None]:
        def failed(failure: Failure) -> None:
            result["ok"] = False
            if failure.check(TimeoutError):
                result["error"] = f"no answer within {PROBE_TIMEOUT:g} s"
            else:
                result["error"] = failure.getErrorMessage().strip().split("\n")[0] or "unreachable"

        def answered(details: Any) -> None:  # a probe may say more than ok (an MCP server: its state)
            if isinstance(details, dict):
                result.update(details)

        d = check()
        d.addTimeout(PROBE_TIMEOUT, self._reactor)
        return d.addCallbacks(answered, failed)

    def render_GET(self, request: Request) -> Any:
        if self._draining():  # stopping: the load balancer should send no one new
            return json_body(request, 503, {"status": "draining"})

        def answer(checks: dict[str, Any]) -> bytes:
            ready = all(c["ok"] for name, c in checks.items() if name not in self._optional)
            whole = all(c["ok"] for c in checks.values())
            body = {"status": "unready" if not ready else "ready" if whole else "degraded", "checks": checks}
            return json_body(request, 200 if ready else 503, body)

        return finish_async(request, self.current().addCallback(answer))


def ops_routes(
    metrics: ServerMetrics, settings: Config, reactor: Any, draining: Callable[[], bool] = lambda: False,
    probes: Mapping[str, Callable[[], Deferred[None]]] | None = None, optional: Collection[str] = (),
) -> dict[str, Resource]:
    """The operations routes, for ``build_site``'s ``routes``; ``draining``: the server is stopping.

    ``probes``: readiness checks of shared services by name (``store`` for PostgreSQL);
    those named in ``optional`` (``redis``: the server degrades without it) only make it ``degraded``.
    """
    def scraped() -> IResource:
        from prometheus_client.twisted import MetricsResource

        return MetricsResource(registry=metrics.registry)

    return {
        "/metrics": OnFirstRequest(scraped, leaf=True),  # prometheus_client is imported by the first scrape
        "/healthz": Health(),
        "/readyz": Ready(settings, reactor, draining, probes, optional),
    }
