"""Every error code livetx sends, the exceptions that carry one, and how things end.

One vocabulary for the three places a client meets a code: WebSocket error
frames (live and chat mode), handshake refusal notices, and HTTP API error
bodies. ``tests/test_docs.py`` checks that each member is documented. Each
exception carries its ``code`` and the HTTP ``status`` an API answer gives
it, so whoever turns an exception into an answer needs one branch. How a
turn ended (:class:`Outcome`, live and chat alike) and how a tool call
ended (:class:`ToolStatus`) are one vocabulary too, for metrics, logs and
what the store keeps.

Domain exceptions stand for what the built-in ones used to be borrowed for:
an ``OSError`` of the disk (a real permission problem) must never reach a
client as "another user's session", and a ``KeyError`` bug must never read
as "no such session".
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

from twisted.python.failure import Failure


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
    # Not an error: the ``code`` of the ``user_msg`` of a voice turn that heard no words (docs/protocol.md).
    NO_SPEECH = "NO_SPEECH"


class CloseCode(IntEnum):
    """The WebSocket close codes livetx closes with, and its client reads (RFC 6455, 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    #: The peer broke the protocol (a board's Protocol-Version this server does not speak).
    PROTOCOL_ERROR = 1002
    #: Data the endpoint cannot take (a board's audio that is not mono Opus).
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008


class Outcome(StrEnum):
    """How a turn ended (live or chat); the value is what metrics, logs and the store say."""

    #: It ran to its end (an empty transcript and a failed speech engine included).
    OK = "ok"
    #: The client stopped it (``interrupt``, or talk-mode speech over the reply).
    INTERRUPTED = "interrupted"
    #: A provider or a bug ended it early (an error frame said why).
    FAILED = "failed"
    #: The connection closed or the server stopped under it.
    DROPPED = "dropped"


class ToolStatus(StrEnum):
    """How a tool call ended; ``ok`` and ``failed`` mean what they mean for a turn."""

    OK = Outcome.OK.value
    FAILED = Outcome.FAILED.value
    #: Unknown tool, or arguments that break its schema: never run.
    REFUSED = "refused"
    TIMEOUT = "timeout"
    #: The turn was interrupted while it ran.
    CANCELLED = "cancelled"


class LivetxError(Exception):
    """A refusal a client is told about, with the code it is told."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    #: The HTTP status of an API answer that reports it.
    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SessionForbidden(LivetxError):
    """The conversation session exists and belongs to another user."""

    code = ErrorCode.FORBIDDEN
    status = 403

    def __init__(self, message: str = "this session belongs to another user") -> None:
        super().__init__(message)


class NoSuchSession(LivetxError):
    """No conversation session has this id."""

    code = ErrorCode.NOT_FOUND
    status = 404

    def __init__(self, message: str = "no such session") -> None:
        super().__init__(message)


class StoreUnavailable(LivetxError):
    """The database cannot be reached (or prepared): nothing of that work was committed.

    The client is told only that; ``str()`` is the operator's one line, which
    names the database (never its password) and the driver's reason.
    """

    code = ErrorCode.STORE_UNAVAILABLE
    status = 503  # the database is away: try again later

    def __init__(self, detail: str) -> None:
        super().__init__("conversations cannot be stored or read right now; nothing was kept")
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class FrameError(LivetxError):
    """A client frame (or request body) we refuse; becomes one error frame, the session lives on."""

    status = 400

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class HTTPError(LivetxError):
    """An HTTP API refusal with its own status and ``code`` (``livetx.web.replies`` writes its body)."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class ProviderError(LivetxError):
    """An outside service failed; ``code`` is the error-frame code to report.

    ``kind`` labels the ``livetx_provider_failures_total`` metric.
    """

    code = ErrorCode.PROVIDER_ERROR
    status = 502
    kind = "provider"


class LLMError(ProviderError):
    code = ErrorCode.LLM_ERROR
    kind = "llm"


class TTSError(ProviderError):
    code = ErrorCode.TTS_ERROR
    kind = "tts"


class STTError(ProviderError):
    code = ErrorCode.STT_ERROR
    kind = "stt"


def describe_failure(failure: Failure, default_code: ErrorCode) -> tuple[ErrorCode, str]:
    """An error frame's code and text: provider errors say what failed, bugs do not."""
    if isinstance(failure.value, ProviderError):
        return failure.value.code, failure.value.message
    return default_code, "internal error while producing the reply"
