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
from typing import Any, BinaryIO, cast

import multipart
from autobahn.twisted.util import peer2str
from twisted.internet.defer import Deferred
from twisted.web.pages import notFound
from twisted.internet.interfaces import ITransport
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from livetx.auth.keys import KeyStore, key_from_request, resolve_username
from livetx.chat.service import ChatRequest, ChatService, Event
from livetx.errors import ErrorCode
from livetx.live.frames import FrameError
from livetx.store import ConversationStore, StoredMessage, StoredSession
from livetx.web.admission import FailedAuth, TooManyFailures
from livetx.web.replies import Departure, HTTPError, error_body, finish_async, json_body

MAX_PAGE_SIZE = 100
#: Attachment types a model may be shown; everything else is refused.
ATTACHMENT_TYPES = ("image/", "audio/", "text/plain", "application/pdf")


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
    """The request body; twisted.web has read it into ``content`` before rendering."""
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


class APIResource(Resource):
    """Checks the API key, then calls ``handle(request)``; refusals become JSON."""

    isLeaf = True
    scope = "chat"
    method = b"GET"
    #: Failed authentications per address, shared with the WebSocket endpoints (None: no limit).
    failures: FailedAuth | None = None

    def __init__(self, keys: KeyStore, store: ConversationStore) -> None:
        super().__init__()
        self.keys = keys
        self.store = store

    def render(self, request: Request) -> Any:
        try:
            if request.method != self.method:
                raise HTTPError(405, ErrorCode.METHOD_NOT_ALLOWED, f"use {self.method.decode()}")
            self.authenticate(request)
            return self.handle(request)
        except HTTPError as error:
            return error_body(request, error)
        except FrameError as error:
            return error_body(request, HTTPError(400, error.code, error.message))

    def authenticate(self, request: Request) -> None:
        headers = {k.decode().lower(): v[0].decode("latin-1") for k, v in request.requestHeaders.getAllRawHeaders()}
        key = key_from_request({}, headers)
        verify = functools.partial(self.keys.verify, key, self.scope)
        try:
            if self.failures is None:
                record = verify()
            else:
                peer = peer2str(cast(ITransport, request.transport))
                record = self.failures.attempt(peer, verify, lambda r: r is None)
        except TooManyFailures as e:
            raise HTTPError(429, ErrorCode.RATE_LIMITED, str(e)) from None
        if key is None:
            raise HTTPError(401, ErrorCode.UNAUTHORIZED, "Missing API key")
        if record is None:
            raise HTTPError(401, ErrorCode.UNAUTHORIZED, f"Invalid API key, or it lacks the {self.scope!r} scope")

    def username(self, request: Request, body: dict[str, Any] | None = None) -> str:
        """From the JSON body when it has one, else from ``?username=``."""
        raw = (body or {}).get("username")
        username, problem = resolve_username(raw if isinstance(raw, str) else _arg(request, "username"))
        if username is None:
            raise HTTPError(400, ErrorCode.BAD_USER, problem or "Invalid username")
        return username

    def handle(self, request: Request) -> Any:
        raise NotImplementedError


class SessionsResource(APIResource):
    """``GET /api/v1/chat/sessions?username=&page=&page_size=``, newest first."""

    def handle(self, request: Request) -> Any:
        username = self.username(request)
        page = _int_arg(request, "page", 1, 1, 1_000_000)
        size = _int_arg(request, "page_size", 20, 1, MAX_PAGE_SIZE)
        d = self.store.sessions(username, (page - 1) * size, size)

        def body(result: tuple[list[StoredSession], int]) -> bytes:
            sessions, total = result
            return json_body(request, 200, {"sessions": [_session_json(s) for s in sessions],
                                        "page": page, "page_size": size, "total": total})

        return finish_async(request, d.addCallback(body))


class MessagesResource(APIResource):
    """``GET /api/v1/chat/sessions/{id}/messages?username=``: only the owner's."""

    def handle(self, request: Request) -> Any:
        username = self.username(request)
        path = request.path.decode("utf-8", "replace").rstrip("/").split("/")
        if len(path) != 7 or path[-1] != "messages" or not path[-2]:
            raise HTTPError(404, ErrorCode.NOT_FOUND, "no such route")
        session_id = path[-2]

        def check(owner: str | None) -> Deferred[list[StoredMessage]]:
            if owner != username:  # someone else's looks the same as none at all
                raise HTTPError(404, ErrorCode.NOT_FOUND, "no such session")
            return self.store.messages(session_id)

        d = self.store.owner(session_id).addCallback(check)
        return finish_async(request, d.addCallback(lambda messages: json_body(request, 200, {
            "session_id": session_id, "messages": [_message_json(m) for m in messages]})))


class FileResource(APIResource):
    """``POST /api/v1/file``: one multipart ``file`` field, checked and stored."""

    scope = "file"
    method = b"POST"

    def __init__(self, keys: KeyStore, store: ConversationStore, max_bytes: int) -> None:
        super().__init__(keys, store)
        self.max_bytes = max_bytes

    def handle(self, request: Request) -> Any:
        username = self.username(request)
        content_type, options = multipart.parse_options_header(
            (request.getHeader(b"content-type") or b"").decode("latin-1"))
        if content_type != "multipart/form-data" or "boundary" not in options:
            raise HTTPError(400, ErrorCode.INVALID_MESSAGE_FORMAT, "send multipart/form-data with a file field")
        content = _content(request)
        content.seek(0)
        upload = None
        try:
            for part in multipart.MultipartParser(content, options["boundary"],
                                                  disk_limit=self.max_bytes, mem_limit=self.max_bytes):
                if part.name == "file" and part.filename:
                    upload = (part.filename, part.content_type or "application/octet-stream", part.raw)
        except multipart.MultipartError as e:
            status = 413 if "limit" in str(e).lower() else 400
            code = ErrorCode.TOO_LARGE if status == 413 else ErrorCode.INVALID_MESSAGE_FORMAT
            raise HTTPError(status, code, str(e)) from None
        if upload is None:
            raise HTTPError(400, ErrorCode.INVALID_MESSAGE_FORMAT, "no file field")
        filename, mime, data = upload
        if len(data) > self.max_bytes:
            raise HTTPError(413, ErrorCode.TOO_LARGE, f"files are limited to {self.max_bytes} bytes")
        if not mime.startswith(ATTACHMENT_TYPES):
            raise HTTPError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"{mime} is not an accepted attachment type")
        d = self.store.add_attachment(username, filename, mime, data)
        return finish_async(request, d.addCallback(lambda record: json_body(request, 200, {
            "attachment_id": record.id, "filename": record.filename, "mime": record.mime,
            "size": record.size, "created_at": record.created_at})))


class ChatResource(APIResource):
    """``POST /api/v1/chat``: a chat turn streamed as Server-Sent Events."""

    method = b"POST"
    isLeaf = False  # /api/v1/chat/sessions lives below it

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()

    def __init__(self, keys: KeyStore, store: ConversationStore, chat: ChatService) -> None:
        super().__init__(keys, store)
        self.chat = chat

    def handle(self, request: Request) -> Any:
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
        client = Departure(request)

        def deliver(event: Event) -> None:
            if client.gone:
                return  # the turn goes on and is stored; nobody is reading
            request.write(b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n")
            if event.get("type") == "end":
                request.finish()

        self.chat.start(chat_request, deliver)
        return NOT_DONE_YET


def api_routes(keys: KeyStore, store: ConversationStore, chat: ChatService,
               max_upload_bytes: int, failures: FailedAuth | None = None) -> dict[str, Resource]:
    """The HTTP routes by path (sessions also serves ``{session_id}/messages``)."""
    sessions = _Sessions(keys, store)
    routes: dict[str, Resource] = {
        "/openapi.json": OpenAPIResource(),
        "/api/v1/chat": ChatResource(keys, store, chat),
        "/api/v1/chat/sessions": sessions,
        "/api/v1/file": FileResource(keys, store, max_upload_bytes),
    }
    for resource in (*routes.values(), sessions._messages):
        if isinstance(resource, APIResource) and failures is not None:
            resource.failures = failures
    return routes


class _Sessions(SessionsResource):
    """The sessions list, which also routes ``{id}/messages`` below it."""

    isLeaf = True

    def __init__(self, keys: KeyStore, store: ConversationStore) -> None:
        super().__init__(keys, store)
        self._messages = MessagesResource(keys, store)

    def render(self, request: Request) -> Any:
        if request.postpath and any(request.postpath):
            return self._messages.render(request)
        return super().render(request)


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
