"""PCM16 and WAV helpers shared by capture, the speech engines and the tests.

Everything here is pure and synchronous; the Live API's input format is
16 kHz mono signed 16-bit little-endian PCM.
"""

from __future__ import annotations

import array
import io
import struct
import sys
import wave

SAMPLE_RATE = 16_000
SAMPLE_WIDTH = 2
BYTES_PER_SECOND = SAMPLE_RATE * SAMPLE_WIDTH


def to_wav(pcm: bytes | bytearray, rate: int = SAMPLE_RATE) -> bytes:
    """Wrap mono PCM16 in a WAV header: a file any player or decoder accepts."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(SAMPLE_WIDTH)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def read_wav(data: bytes) -> tuple[bytes, int]:
    """A WAV file's audio as mono PCM16 and its rate (channels are averaged).

    Anything that is not a readable 16-bit WAV raises ``ValueError``.
    """
    try:
        with wave.open(io.BytesIO(data)) as w:
            if w.getsampwidth() != SAMPLE_WIDTH:
                raise ValueError(f"only 16-bit WAV is supported, not {8 * w.getsampwidth()}-bit")
            channels, rate = w.getnchannels(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except wave.Error as e:
        raise ValueError(f"not a WAV file: {e}") from None
    except EOFError:  # raised with no message
        raise ValueError(f"not a WAV file: {'it ends inside its header' if data else 'it is empty'}") from None
    if channels == 1:
        return frames, rate
    samples = _samples(frames)
    mono = array.array("h", (
        sum(samples[i : i + channels]) // channels for i in range(0, len(samples), channels)
    ))
    return _bytes(mono), rate


def duration_ms(audio: bytes) -> float | None:
    """How long a WAV file plays, from its header; None for any other format.

    Read once per spoken sentence: a plain header (``fmt `` then ``data``,
    as speech services write) is read directly; anything else through
    :mod:`wave`, which costs ten times more.
    """
    if audio[:4] == b"RIFF" and audio[8:16] == b"WAVEfmt " and len(audio) >= 44:
        fmt_size, = struct.unpack_from("<I", audio, 16)
        rate, = struct.unpack_from("<I", audio, 24)
        block, = struct.unpack_from("<H", audio, 32)
        data = 20 + fmt_size
        if audio[data : data + 4] == b"data" and rate and block:
            size, = struct.unpack_from("<I", audio, data + 4)
            return float(1000 * (min(size, len(audio) - data - 8) // block) / rate)
    try:
        with wave.open(io.BytesIO(audio)) as w:
            return float(1000 * w.getnframes() / w.getframerate())
    except (wave.Error, EOFError, ZeroDivisionError):
        return None


def audio_format(audio: bytes) -> str:
    """Name a speech file's format from its first bytes (wav, mp3, opus, flac or aac)."""
    if audio[:4] == b"RIFF":
        return "wav"
    if audio[:4] == b"OggS":
        return "opus"
    if audio[:4] == b"fLaC":
        return "flac"
    if audio[:1] == b"\xff" and len(audio) > 1 and audio[1] & 0xF6 == 0xF0:
        return "aac"  # an ADTS header: sync bits, then layer 00
    return "mp3"


def resample(pcm: bytes, rate: int, target: int = SAMPLE_RATE) -> bytes:
    """Band-limited resampling (libsoxr): speech keeps its clarity for recognizers and players."""
    if rate == target or not pcm:
        return pcm
    # Imported here: numpy is large (benchmarks/RESULTS.md), and a server
    # fed 16 kHz audio (the Live API's own format) never needs it.
    import numpy as np
    import soxr

    samples = np.frombuffer(pcm, dtype="<i2")
    resampled: bytes = soxr.resample(samples, rate, target).astype("<i2").tobytes()
    return resampled


def as_16k_wav(data: bytes) -> bytes:
    """A WAV at any rate as the 16 kHz WAV a voice turn carries (recordings for tests and benchmarks)."""
    pcm, rate = read_wav(data)
    return to_wav(resample(pcm, rate))


def _samples(pcm: bytes) -> array.array[int]:
    samples = array.array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def _bytes(samples: array.array[int]) -> bytes:
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()
