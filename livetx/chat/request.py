"""A chat turn's request: a socket's ``send`` or an HTTP ``POST /api/v1/chat`` body, checked.

Both ways in take the same body (docs/protocol.md, docs/http-api.md), so
they share one parser; a bad field is a :class:`~livetx.errors.FrameError`
with ``INVALID_MESSAGE_FORMAT``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from livetx.errors import ErrorCode, FrameError
from livetx.store import Part

PART_TYPES = ("plain", "image", "file")
#: Longest id a client may choose (session, message, attachment): each is echoed in every event.
MAX_ID_LENGTH = 128


def _invalid(message: str) -> FrameError:
    return FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, message)


def parse_parts(message: Any) -> list[Part]:
    """Check a ``message`` field: a list of parts, or a plain string for convenience."""
    if isinstance(message, str):
        message = [{"type": "plain", "text": message}]
    if not isinstance(message, list):
        raise _invalid("message must be list")
    if not message:
        raise _invalid("message must not be empty")
    parts: list[Part] = []
    for part in message:
        if not isinstance(part, dict) or part.get("type") not in PART_TYPES:
            raise _invalid(f"each part must be an object with type in {list(PART_TYPES)}")
        if part["type"] == "plain":
            if not isinstance(part.get("text"), str):
                raise _invalid("a plain part needs text")
            parts.append({"type": "plain", "text": part["text"]})
        else:
            attachment = part.get("attachment_id")
            if not isinstance(attachment, str) or not attachment or len(attachment) > MAX_ID_LENGTH:
                raise _invalid(f"an {part['type']} part needs an attachment_id of at most {MAX_ID_LENGTH} characters")
            parts.append({"type": part["type"], "attachment_id": attachment})
    if not any(p["type"] == "plain" and p["text"].strip() for p in parts):
        raise _invalid("message needs some text")
    return parts


def _optional_text(request: dict[str, Any], name: str) -> str | None:
    value = request.get(name)
    if value is None or (isinstance(value, str) and value.strip() and len(value) <= MAX_ID_LENGTH):
        return value.strip() if value else None
    raise _invalid(f"{name} must be a non-empty string of at most {MAX_ID_LENGTH} characters")


@dataclass
class ChatRequest:
    """A checked ``send`` (socket) or ``POST /api/v1/chat`` (HTTP) body."""

    username: str
    parts: list[Part]
    session_id: str | None = None
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    streaming: bool = True

    @classmethod
    def parse(cls, username: str, body: dict[str, Any]) -> ChatRequest:
        streaming = body.get("enable_streaming", True)
        if not isinstance(streaming, bool):
            raise _invalid("enable_streaming must be true or false")
        return cls(
            username=username,
            parts=parse_parts(body.get("message")),
            session_id=_optional_text(body, "session_id"),
            message_id=_optional_text(body, "message_id") or str(uuid.uuid4()),
            streaming=streaming,
        )
