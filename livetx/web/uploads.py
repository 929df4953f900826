"""Reading a ``POST /api/v1/file`` upload: the multipart body, then what the file really is.

:func:`read_upload` runs in a thread, never on the reactor: a multipart
body of several megabytes takes a parser longer than a turn may wait. The
body is already on disk (Twisted spools large bodies to a temporary file),
and the parser keeps big parts on disk too.

The declared content type is the client's guess (``curl -F file=@a.wav``
says ``application/octet-stream``), and a lie costs nothing, so the type is
read from the file's first bytes by ``filetype``; only plain text, which
has no magic number, is recognised by its extension and its content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import IO, Any

import multipart

from livetx.errors import ErrorCode
from livetx.web.replies import HTTPError

#: What a model may be shown, as the 415 answer says it.
ACCEPTED = "images, audio, plain text (.txt, .md) and PDF, recognised by their content"
#: A few aliases ``filetype`` uses, written the way browsers and models expect.
_CANONICAL = {"audio/x-wav": "audio/wav", "audio/x-flac": "audio/flac", "audio/x-aiff": "audio/aiff"}
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".log", ".csv")
#: The bytes ``filetype`` looks at.
_SNIFF = 8192
#: Bytes of headers and boundaries a multipart body may add to its file.
MULTIPART_OVERHEAD = 64 * 1024
#: Parts up to this size are parsed in memory, bigger ones on disk.
_IN_MEMORY = 256 * 1024


@dataclass(frozen=True)
class Upload:
    filename: str
    mime: str
    data: bytes


def read_upload(content: IO[bytes], boundary: str, max_bytes: int) -> Upload:
    """The ``file`` field of a multipart body, typed from its content, or a :class:`~livetx.web.replies.HTTPError`."""
    found: tuple[str, bytes] | None = None
    try:
        content.seek(0)
        parser = multipart.MultipartParser(
            content, boundary, partsize_limit=max_bytes, spool_limit=_IN_MEMORY,
            disk_limit=max_bytes + MULTIPART_OVERHEAD)
        for part in parser:
            if part.name == "file" and part.filename and found is None:
                _refuse_early(part)
                found = (part.filename, part.raw)
    except multipart.ParserLimitReached:
        raise HTTPError(413, ErrorCode.TOO_LARGE, f"files are limited to {max_bytes} bytes") from None
    except multipart.MultipartError as e:
        raise HTTPError(400, ErrorCode.INVALID_MESSAGE_FORMAT, f"not a multipart body: {e}") from None
    except (OSError, ValueError):  # the client left and its body was closed under us
        raise HTTPError(400, ErrorCode.INVALID_MESSAGE_FORMAT, "the upload was cut off") from None
    if found is None:
        raise HTTPError(400, ErrorCode.INVALID_MESSAGE_FORMAT, "no file field")
    filename, data = found
    mime = attachment_type(data, filename)
    if mime is None:
        raise _unsupported(filename)
    return Upload(filename, mime, data)


def _refuse_early(part: Any) -> None:
    """Refuse a file its first bytes already rule out, before reading it all into memory.

    Only plain text needs the whole file to be judged.
    """
    if part.filename.lower().endswith(_TEXT_SUFFIXES):
        return
    part.file.seek(0)
    head = part.file.read(_SNIFF)
    if attachment_type(head, part.filename) is None:
        raise _unsupported(part.filename)


def _unsupported(filename: str) -> HTTPError:
    return HTTPError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"{filename!r} is not an accepted file; accepted: {ACCEPTED}")


def attachment_type(data: bytes, filename: str) -> str | None:
    """The accepted type of a file, from its magic bytes (or, for text, its name and bytes)."""
    import filetype  # on the first upload: an idle server need not load its type tables

    kind = filetype.guess(data[:_SNIFF])
    if kind is not None:
        mime = _CANONICAL.get(kind.mime, kind.mime)
        return mime if mime.startswith(("image/", "audio/")) or mime == "application/pdf" else None
    if filename.lower().endswith(_TEXT_SUFFIXES) and _is_text(data):
        return "text/plain"
    return None


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return _CONTROL.search(data) is None
