"""The HTTP Open API beside the sockets: chat over SSE, sessions, attachments.

Each route checks an API key (``X-API-Key`` or ``Authorization: Bearer``) and
its scope, then answers JSON; failures are JSON too, with an HTTP status and a
``code``. Chat turns run through the same :class:`ChatService` as chat-mode
sockets, so a socket bound to the session sees them as well.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, BinaryIO, Callable, cast

import multipart
from autobahn.twisted.util import peer2str
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITransport
from twisted.internet.threads import deferToThread
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from livetx.auth.keys import REVOKED, KeyStore, key_from_request, resolve_username
from livetx.chat.service import MAX_ID_LENGTH, ChatRequest, ChatService
from livetx.config import ServerConfig
from livetx.errors import ErrorCode, LivetxError
from livetx.metrics import ServerMetrics
from livetx.store import ConversationStore, StoredMessage, StoredSession
from livetx.web.admission import FailedAuth
# The SSE stream paces like a socket; it lives with the flow control, importable from here as before.
from livetx.web.flow import EventStream as EventStream
from livetx.web.replies import HTTPError, error_body, finish_async, json_body
from livetx.web.uploads import MULTIPART_OVERHEAD, Upload, read_upload

MAX_PAGE_SIZE = 100
#: Where chat turns stream as SSE; their metrics' ``endpoint`` label.
CHAT_PATH = "/api/v1/chat"


def _arg(request: Request, name: str) -> str | None:
    values = (request.args or {}).get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = _arg(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, ErrorCode.INVALID_MESSAGE_FORMAT, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise HTTPError(400, ErrorCode.INVALID_MESSAGE_FORMAT, f"{name} must be between {low} and {high}")
    return value


def _content(request: Request) -> BinaryIO:
    """The request body; twisted.web has read it into ``content`` (a temporary file past 100 kB)."""
    content: BinaryIO | None = request.content
    assert content is not None
    return content


def _session_json(session: StoredSession) -> dict[str, Any]:
    return {"session_id": session.id, "title": session.title, "kind": session.kind,
            "created_at": session.created_at, "updated_at": session.updated_at}


def _message_json(message: StoredMessage) -> dict[str, Any]:
    return {"id": message.id, "role": message.role, "message": message.parts,
            "created_at": message.created_at, "interrupted": message.interrupted,
            "input_type": message.input_type, "metrics": message.metrics}


def _headers(request: Request) -> dict[str, str]:
    return {k.decode().lower(): v[0].decode("latin-1") for k, v in request.requestHeaders.getAllRawHeaders()}


class APIResource(Resource):
    """Checks the method and the API key, then Twisted calls ``render_GET``/``render_POST``.

    A request with a body is checked once its headers are in, before the
    body is read (:class:`~livetx.fences.twisted_web.GuardedRequest`); one
    without is checked here.
    """

    isLeaf = True
    scope = "chat"
    #: Failed authentications per address, shared with the WebSocket endpoints (None: no limit).
    failures: FailedAuth | None = None

    def __init__(self, keys: KeyStore, store: ConversationStore) -> None:
        super().__init__()
        self.keys = keys
        self.store = store

    def render(self, request: Request) -> Any:
        try:
            if not getattr(request, "checked", False):
                self.check_headers(request)
            return super().render(request)
        except LivetxError as error:  # a refusal (HTTPError, FrameError, ...) with its own status
            return error_body(request, error)

    def check_headers(self, request: Request) -> None:
        """The method is one this route has, and the key is valid for its scope."""
        method = (request.method or b"").decode("ascii", "replace")
        if not hasattr(self, f"render_{method}"):
            allowed = sorted(name[7:] for name in dir(self) if name.startswith("render_"))
            raise HTTPError(405, ErrorCode.METHOD_NOT_ALLOWED, f"use {' or '.join(allowed)}")
        self.authenticate(request)
        request.checked = True  # type: ignore[attr-defined]

    def lookup(self, request: Request) -> Deferred[None] | None:
        """A key this node's copy lacks is looked up before the request is judged (a key made a moment ago)."""
        return self.keys.lookup(key_from_request({}, _headers(request)))

    def authenticate(self, request: Request) -> None:
        key = key_from_request({}, _headers(request))
        verify = functools.partial(self.keys.verify, key, self.scope)
        if self.failures is None:
            record = verify()
        else:  # past the address's limit: TooManyFailures, answered 429 (its status)
            peer = peer2str(cast(ITransport, request.transport))
            record = self.failures.attempt(peer, verify, lambda r: r is None)
        if key is None:
            raise HTTPError(401, ErrorCode.UNAUTHORIZED, "Missing API key")
        if record is None:
            reason = self.keys.refusal(key)
            raise HTTPError(401, ErrorCode.UNAUTHORIZED,
                            reason if reason == REVOKED else f"{reason}, or it lacks the {self.scope!r} scope")

    def username(self, request: Request, body: dict[str, Any] | None = None) -> str:
        """From the JSON body when it has one, else from ``?username=``."""
        raw = (body or {}).get("username")
        username, problem = resolve_username(raw if isinstance(raw, str) else _arg(request, "username"))
        if username is None:
            raise HTTPError(400, ErrorCode.BAD_USER, problem or "Invalid username")
        return username


class SessionsResource(APIResource):
    """``GET /api/v1/chat/sessions?username=&page=&page_size=``, newest first.

    Below it, ``{session_id}/messages``: the id is one path segment, which
    Twisted has already percent-decoded (``live%3Aalice``, or a non-ASCII
    username's default session).
    """

    isLeaf = False

    def getChild(self, path: bytes, request: Request) -> IResource:
        if not path:
            return self  # a trailing slash
        try:
            session_id = path.decode("utf-8")
        except UnicodeDecodeError:
            return notFound()
        if len(session_id) > MAX_ID_LENGTH:
            return notFound()  # no such session can exist
        return _Session(MessagesResource(self.keys, self.store, session_id, self.failures))

    def render_GET(self, request: Request) -> Any:
        username = self.username(request)
        page = _int_arg(request, "page", 1, 1, 1_000_000)
        size = _int_arg(request, "page_size", 20, 1, MAX_PAGE_SIZE)
        d = self.store.sessions(username, (page - 1) * size, size)

        def body(result: tuple[list[StoredSession], int]) -> bytes:
            sessions, total = result
            return json_body(request, 200, {"sessions": [_session_json(s) for s in sessions],
                                        "page": page, "page_size": size, "total": total})

        return finish_async(request, d.addCallback(body))


class _Session(Resource):
    """``sessions/{id}``: only ``messages`` lies below it."""

    def __init__(self, messages: MessagesResource) -> None:
        super().__init__()
        self.putChild(b"messages", messages)

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()

    def render(self, request: Request) -> Any:
        page: Any = notFound()
        return page.render(request)


class MessagesResource(APIResource):
    """``GET /api/v1/chat/sessions/{id}/messages?username=``: only the owner's."""

    def __init__(self, keys: KeyStore, store: ConversationStore, session_id: str,
                 failures: FailedAuth | None) -> None:
        super().__init__(keys, store)
        self.session_id = session_id
        self.failures = failures

    def render_GET(self, request: Request) -> Any:
        username = self.username(request)
        if any(request.postpath or ()):
            raise HTTPError(404, ErrorCode.NOT_FOUND, "no such route")
        session_id = self.session_id

        def check(session: StoredSession | None) -> Deferred[list[StoredMessage]]:
            if session is None:  # ids are per user: another's is none of this user's
                raise HTTPError(404, ErrorCode.NOT_FOUND, "no such session")
            return self.store.messages(username, session_id)

        def body(messages: list[StoredMessage]) -> bytes:
            return json_body(request, 200, {"session_id": session_id, "messages": [_message_json(m) for m in messages]})

        return finish_async(request, self.store.session(username, session_id).addCallback(check).addCallback(body))


class FileResource(APIResource):
    """``POST /api/v1/file``: one multipart ``file`` field, checked and stored.

    The body reaches this route only from a key with the ``file`` scope and
    within ``max_upload_bytes`` (and some room for the multipart framing);
    it is parsed in a thread (:func:`~livetx.web.uploads.read_upload`).
    """

    scope = "file"

    def __init__(self, keys: KeyStore, store: ConversationStore, max_bytes: int) -> None:
        super().__init__(keys, store)
        self.max_bytes = max_bytes

    def body_limit(self, request: Request) -> int:
        return self.max_bytes + MULTIPART_OVERHEAD

    def render_POST(self, request: Request) -> Any:
        username = self.username(request)
        content_type, options = multipart.parse_options_header(
            (request.getHeader(b"content-type") or b"").decode("latin-1"))
        if content_type != "multipart/form-data" or "boundary" not in options:
            raise HTTPError(400, ErrorCode.INVALID_MESSAGE_FORMAT, "send multipart/form-data with a file field")
        content = _content(request)

        def store(upload: Upload) -> Deferred[Any]:
            return self.store.add_attachment(username, upload.filename, upload.mime, upload.data)

        def body(record: Any) -> bytes:
            return json_body(request, 200, {"attachment_id": record.id, "filename": record.filename, "mime": record.mime,
                                        "size": record.size, "created_at": record.created_at})

        d = deferToThread(read_upload, content, options["boundary"], self.max_bytes)
        return finish_async(request, d.addCallback(store).addCallback(body))


class ChatResource(APIResource):
    """``POST /api/v1/chat``: a chat turn streamed as Server-Sent Events.

    The stream is a push producer's consumer like a socket: while the
    client reads slower than the turn writes, the turn's output pauses (its
    deltas wait in the reply it keeps anyway, see
    :class:`livetx.chat.service.ChatTurn`); of what it must still send, up to
    ``max_send_buffer_bytes`` wait, and past that the stream is cut (the
    turn still completes and is stored). A body is a chat ``send`` and gets
    the socket's message limit.
    """

    isLeaf = False  # /api/v1/chat/sessions lives below it

    def __init__(self, keys: KeyStore, store: ConversationStore, chat: ChatService, limits: ServerConfig,
                 metrics: ServerMetrics | None = None, hold: Callable[[Deferred[None]], None] | None = None) -> None:
        super().__init__(keys, store)
        self.chat = chat
        self.limits = limits
        #: Each request's turn is counted and logged as a socket's chat turn is.
        self.metrics = metrics or ServerMetrics()
        #: Keeps a stopping server up until a stream's last bytes are out (``ConnectionTracker.hold``).
        self.hold = hold

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()

    def body_limit(self, request: Request) -> int:
        return self.limits.max_message_bytes

    def render_POST(self, request: Request) -> Any:
        try:
            body = json.loads(_content(request).read() or b"null")
        except ValueError:
            raise HTTPError(400, ErrorCode.INVALID_JSON, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(400, ErrorCode.INVALID_MESSAGE_FORMAT, "body must be a JSON object")
        chat_request = ChatRequest.parse(self.username(request, body), body)
        if self.chat.draining:  # running turns drain; none starts
            raise HTTPError(503, ErrorCode.PROCESSING_ERROR, "server is shutting down")
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        stream = EventStream(request, self.limits.max_send_buffer_bytes, self._last_bytes)
        observer = self.metrics.observer(CHAT_PATH, "sse", chat_request.username)
        stream.follow(self.chat.start(chat_request, stream.deliver, observer))
        return NOT_DONE_YET

    def _last_bytes(self, channel: Any) -> None:
        """A stream ended: while the server stops, close its connection once written, and wait for that."""
        lost = getattr(channel, "notify_lost", None)
        if self.chat.draining and self.hold is not None and lost is not None:
            self.hold(lost())
            channel.transport.loseConnection()  # after what is buffered is written


def api_routes(keys: KeyStore, store: ConversationStore, chat: ChatService, limits: ServerConfig,
               failures: FailedAuth | None = None, metrics: ServerMetrics | None = None,
               hold: Callable[[Deferred[None]], None] | None = None) -> dict[str, Resource]:
    """The HTTP routes by path (sessions also serves ``{session_id}/messages``)."""
    routes: dict[str, Resource] = {
        "/openapi.json": OpenAPIResource(),
        CHAT_PATH: ChatResource(keys, store, chat, limits, metrics, hold),
        "/api/v1/chat/sessions": SessionsResource(keys, store),
        "/api/v1/file": FileResource(keys, store, limits.max_upload_bytes),
    }
    for resource in routes.values():
        if isinstance(resource, APIResource) and failures is not None:
            resource.failures = failures
    return routes


class OpenAPIResource(Resource):
    """``GET /openapi.json``: the description shipped with the package.

    Read on first request, not at start-up: the YAML parser and the parsed
    document would otherwise sit in every server's idle memory.
    """

    isLeaf = True

    @functools.cached_property
    def body(self) -> bytes:
        return json.dumps(load_openapi()).encode("utf-8")

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return self.body


def load_openapi() -> dict[str, Any]:
    import yaml

    text = resources.files("livetx.web").joinpath("openapi.yaml").read_text("utf-8")
    spec: dict[str, Any] = yaml.safe_load(text)
    return spec
