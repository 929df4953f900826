"""Every error code livetx sends, and the domain exceptions that carry one.

One vocabulary for the three places a client meets a code: WebSocket error
frames (live and chat mode), handshake refusal notices, and HTTP API error
bodies. ``tests/test_docs.py`` checks that each member is documented.

Domain exceptions stand for what the built-in ones used to be borrowed for:
an ``OSError`` of the disk (a real permission problem) must never reach a
client as "another user's session", and a ``KeyError`` bug must never read
as "no such session".
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """An error's ``code`` on the wire; a ``str``, so frames encode it as is."""

    # The reference's own (docs/protocol.md).
    INVALID_MESSAGE_FORMAT = "INVALID_MESSAGE_FORMAT"
    PROCESSING_ERROR = "PROCESSING_ERROR"
    # Live and chat frames (docs/protocol.md).
    INVALID_JSON = "INVALID_JSON"
    UNSUPPORTED_FRAME = "UNSUPPORTED_FRAME"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    INVALID_STATE = "INVALID_STATE"
    STAMP_MISMATCH = "STAMP_MISMATCH"
    INVALID_AUDIO = "INVALID_AUDIO"
    AUDIO_TOO_LONG = "AUDIO_TOO_LONG"
    FORBIDDEN = "FORBIDDEN"
    STT_UNAVAILABLE = "STT_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    RATE_LIMITED = "RATE_LIMITED"
    # Outside services (raised as ProviderError subclasses, livetx.providers.base).
    PROVIDER_ERROR = "PROVIDER_ERROR"
    LLM_ERROR = "LLM_ERROR"
    TTS_ERROR = "TTS_ERROR"
    STT_ERROR = "STT_ERROR"
    # Extension codes (docs/protocol-extensions.md): only opted-in clients meet them.
    UNKNOWN_SETTING = "UNKNOWN_SETTING"
    INVALID_SETTING = "INVALID_SETTING"
    UNKNOWN_TURN = "UNKNOWN_TURN"
    RESUME_EXPIRED = "RESUME_EXPIRED"
    # Handshake refusals of the unified endpoint and the HTTP API (docs/protocol.md, docs/http-api.md).
    UNAUTHORIZED = "UNAUTHORIZED"
    BAD_USER = "BAD_USER"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    # The conversation store cannot be reached (docs/protocol.md, docs/deployment.md).
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    # HTTP API only (docs/http-api.md).
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    TOO_LARGE = "TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"


class LivetxError(Exception):
    """A refusal a client is told about, with the code it is told."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SessionForbidden(LivetxError):
    """The conversation session exists and belongs to another user."""

    code = ErrorCode.FORBIDDEN

    def __init__(self, message: str = "this session belongs to another user") -> None:
        super().__init__(message)


class NoSuchSession(LivetxError):
    """No conversation session has this id."""

    code = ErrorCode.NOT_FOUND

    def __init__(self, message: str = "no such session") -> None:
        super().__init__(message)


class StoreUnavailable(LivetxError):
    """The database cannot be reached (or prepared): nothing of that work was committed.

    The client is told only that; ``str()`` is the operator's one line, which
    names the database (never its password) and the driver's reason.
    """

    code = ErrorCode.STORE_UNAVAILABLE

    def __init__(self, detail: str) -> None:
        super().__init__("conversations cannot be stored or read right now; nothing was kept")
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class HTTPError(Exception):
    """An HTTP API refusal with its status and ``code`` (``livetx.web.replies`` writes its body)."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
