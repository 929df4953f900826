"""Keeping voice segments on disk, only when ``[stt] keep_audio`` asks for it.

By default audio lives in memory for its turn and nowhere else. For
debugging recognition an operator can keep every segment as a WAV file;
the writes happen on a worker thread so a slow disk never stalls a turn.
"""

from __future__ import annotations

import re
import time
from itertools import count
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from livetx.threads import Worker

_log = Logger()
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class AudioArchive:
    """Writes ``DATA_DIR/audio/<time>-<user>-<n>.wav`` files."""

    def __init__(self, directory: Path, reactor: Any) -> None:
        self.directory = directory
        self._worker = Worker(reactor, "audio-archive", 1)
        self._serial = count(1)

    def keep(self, username: str, wav: bytes) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        user = _UNSAFE.sub("_", username)[:32] or "user"
        path = self.directory / f"{stamp}-{user}-{next(self._serial)}.wav"
        self._worker.run(self._write, path, wav).addErrback(
            lambda f: _log.failure("Could not keep audio in {path}", f, path=str(path))
        )

    def _write(self, path: Path, wav: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(wav)
