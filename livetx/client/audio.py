"""Audio on the client side: any WAV in as Live API frames, reply chunks out as one file."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Iterator

from livetx.audio import BYTES_PER_SECOND, read_wav, resample, to_wav

#: 20 ms of 16 kHz PCM16: the frame size a microphone client sends.
FRAME_BYTES = BYTES_PER_SECOND // 50
#: 100 ms: the frame size a recording is uploaded in (fewer messages, same audio).
UPLOAD_FRAME_BYTES = BYTES_PER_SECOND // 10


def load_speech(path: Path) -> bytes:
    """A WAV file of any rate and channel count as 16 kHz mono PCM16; ``ValueError`` if unreadable."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {str(path)!r}: {e.strerror}") from None
    pcm, rate = read_wav(data)
    return resample(pcm, rate)


def frames(pcm: bytes, size: int = FRAME_BYTES) -> Iterator[bytes]:
    for i in range(0, len(pcm), size):
        yield pcm[i : i + size]


def join_chunks(chunks: list[bytes]) -> bytes:
    """The reply's audio chunks as one file, in order.

    WAV chunks become one WAV at the first chunk's rate; other formats
    (MP3, AAC, Opus streams) are frame sequences that play concatenated.
    """
    if not chunks or not all(c.startswith(b"RIFF") for c in chunks):
        return b"".join(chunks)
    rate = read_wav(chunks[0])[1]
    pcm = b"".join(resample(*read_wav(chunk), target=rate) for chunk in chunks)
    return to_wav(pcm, rate)


def player() -> list[str] | None:
    """A command that plays a WAV file here, if the machine has one."""
    candidates = [["afplay"]] if sys.platform == "darwin" else []
    candidates += [["paplay"], ["aplay", "-q"], ["ffplay", "-nodisp", "-autoexit", "-loglevel", "quiet"]]
    for command in candidates:
        if shutil.which(command[0]):
            return command
    return None
