"""One ``twisted.web`` Site for every endpoint, so HTTP routes can join later."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

from twisted.web.http import combinedLogFormatter
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from livetx.chat.service import ChatService
from livetx.config import ServerConfig
from livetx.domain import Engines, MemoryOpener
from livetx.fences.twisted_web import Upgrade, make_site
from livetx.metrics import ServerMetrics
from livetx.web.admission import AddressLimit, WaitingGate
from livetx.web.connections import ConnectionTracker
from livetx.web.protocol import LiveServerFactory
from livetx.web.sockets import echo_factory, memory_journals
from livetx.web.replies import error_body

if TYPE_CHECKING:
    from livetx.live.journal import Journals

#: Path → which gate admits it; the gate names are keys of ``build_site``'s ``gates``.
WEBSOCKET_ROUTES: dict[str, str] = {
    "/api/live_chat/ws": "jwt_live",
    "/api/unified_chat/ws": "jwt_unified",
    "/api/v1/live/ws": "api_key",
}

#: Where ``--conformance-echo`` (a test option) serves its echo socket.
ECHO_PATH = "/conformance/echo"


class _WithoutQuery:
    """A request as the access log sees it: no query string, where tokens and keys ride.

    Nor in the ``Referer``: a page opened from a login link (``/?login=…``)
    or a URL with ``?token=`` names it there, and a browser that ignores the
    page's ``no-referrer`` (or another client) would put it in the log.
    """

    def __init__(self, request: Request) -> None:
        self._request = request
        self.uri = _without_query(request.uri)

    def getHeader(self, name: bytes) -> bytes | None:
        value: bytes | None = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return _without_query(value)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def _without_query(uri: bytes) -> bytes:
    """A URI up to its query or fragment, whichever comes first."""
    return re.split(rb"[?#]", uri, maxsplit=1)[0]


def redacted_log_formatter(timestamp: str, request: Request) -> str:
    """Twisted's combined log format, minus the secrets in the query string."""
    line: str = combinedLogFormatter(timestamp, _WithoutQuery(request))
    return line


class _Node(Resource):
    """A path segment; unknown children get an escaped 404 page."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


def _mount(root: Resource, path: str, leaf: IResource) -> None:
    parts = path.strip("/").encode("ascii").split(b"/")
    node = root
    for part in parts[:-1]:
        child = node.children.get(part)
        if child is None:
            child = _Node()
            node.putChild(part, child)
        node = child
    node.putChild(parts[-1], leaf)


def build_site(
    *,
    gates: dict[str, WaitingGate],
    engines: Engines,
    limits: ServerConfig,
    connections: ConnectionTracker,
    clock: Any,
    chat: ChatService,
    memories: MemoryOpener | None = None,
    routes: dict[str, Resource] | None = None,
    metrics: ServerMetrics | None = None,
    echo: bool = False,
    journals: Callable[[], Journals] | None = None,
) -> Site:
    """The resource tree: HTTP ``routes``, and a factory with its own gate per socket path."""
    root = _Node()
    metrics = metrics or ServerMetrics()  # one registry for every socket path
    journals = journals or memory_journals(clock)  # one resume journal for every socket path
    for path, resource in (routes or {}).items():
        _mount(root, path, resource)
    for path, gate_name in WEBSOCKET_ROUTES.items():
        factory = LiveServerFactory(
            gate=gates[gate_name],
            engines=engines,
            limits=limits,
            connections=connections,
            clock=clock,
            chat=chat,
            memories=memories,
            metrics=metrics,
            endpoint=path,
            journals=journals,
        )
        _mount(root, path, Upgrade(factory))
    if echo:
        _mount(root, ECHO_PATH, Upgrade(echo_factory(limits)))
    # Until a request arrives the channel is Twisted Web's: its headers get
    # handshake_timeout in all (Autobahn's own timeout starts only once the
    # upgrade request is read, and then completes at once).
    addresses = AddressLimit(limits.max_connections_per_address, limits.limit_loopback)
    site = make_site(root, admit=addresses.admit, refusal_body=error_body, logFormatter=redacted_log_formatter,
                     timeout=limits.handshake_timeout or None)
    site.displayTracebacks = False
    return site
