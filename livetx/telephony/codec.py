"""Telephone audio: G.711 μ-law and A-law, and linear PCM, at 8 or 16 kHz.

The pipeline speaks 16 kHz PCM16; a phone line speaks 8-bit G.711 at
8 kHz. ``audioop`` did this until Python 3.13 removed it, so the companding
is done here with numpy lookup tables (the ITU-T G.711 segment formulas,
built once: decoding is one table lookup per byte, encoding one per 16-bit
sample), and the rate change with libsoxr, the resampler the rest of
livetx uses (:func:`livetx.audio.resample`). Inbound audio goes through one
streaming resampler per call, so 20 ms packets join without a click at
every edge. ``benchmarks/calls_bench.py codec`` measures the cost per
call-second.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from livetx.audio import SAMPLE_RATE, resample

if TYPE_CHECKING:
    import numpy as np

#: The encodings a carrier may name, in our words.
MULAW, ALAW, L16 = "mulaw", "alaw", "l16"


@functools.cache
def _tables() -> dict[str, Any]:
    """The four G.711 tables: byte → sample (decode) and sample → byte (encode), per law."""
    import numpy as np

    codes = np.arange(256, dtype=np.int32)
    # μ-law (G.711 §2): complement, then sign, 3-bit segment, 4-bit step.
    u = ~codes & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    mulaw_decode = np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)
    # A-law (G.711 §3): even bits inverted, then sign, segment, step.
    a = codes ^ 0x55
    step, segment = (a & 0x0F) << 4, (a & 0x70) >> 4
    linear = np.where(segment == 0, step + 8, (step + 0x108) << np.maximum(segment - 1, 0))
    alaw_decode = np.where(a & 0x80, linear, -linear).astype(np.int16)
    samples = np.arange(-32768, 32768, dtype=np.int32)
    return {
        "mulaw_decode": mulaw_decode,
        "alaw_decode": alaw_decode,
        "mulaw_encode": _mulaw_encode(samples),
        "alaw_encode": _alaw_encode(samples),
    }


def _mulaw_encode(samples: np.ndarray) -> np.ndarray:
    import numpy as np

    value = samples >> 2  # 14-bit, as G.711's reference code takes it
    mask = np.where(value < 0, 0x7F, 0xFF)
    biased = np.minimum(np.abs(value), 8159) + 33
    segment = np.floor(np.log2(biased)).astype(np.int32) - 5
    step = (biased >> (segment + 1)) & 0x0F
    code = np.where(segment > 7, 0x7F, (segment << 4) | step)  # clipped: the top code
    encoded: np.ndarray = (code ^ mask).astype(np.uint8)
    return encoded


def _alaw_encode(samples: np.ndarray) -> np.ndarray:
    import numpy as np

    sign = np.where(samples >= 0, 0x80, 0)
    magnitude = np.where(samples >= 0, samples, -samples - 1) >> 3  # 13-bit magnitude
    magnitude = np.minimum(magnitude, 0x0FFF)
    segment = np.where(magnitude < 32, 0, np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4)
    step = np.where(segment == 0, magnitude >> 1, magnitude >> np.maximum(segment, 1)) & 0x0F
    encoded: np.ndarray = ((sign | (segment << 4) | step) ^ 0x55).astype(np.uint8)
    return encoded


def decode_g711(data: bytes, law: str) -> bytes:
    """G.711 bytes as PCM16 at the same rate."""
    import numpy as np

    table = _tables()[f"{law}_decode"]
    return bytes(table[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes())


def encode_g711(pcm: bytes, law: str) -> bytes:
    """PCM16 as G.711 bytes at the same rate."""
    import numpy as np

    table = _tables()[f"{law}_encode"]
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32) + 32768
    return bytes(table[samples].tobytes())


@dataclass(frozen=True)
class AudioFormat:
    """A carrier's audio on the wire: encoding and rate (always mono)."""

    encoding: str
    rate: int
    #: L16 in network byte order (an RTP payload, RFC 3551), not the pipeline's little-endian.
    big_endian: bool = False

    @property
    def bytes_per_ms(self) -> float:
        return self.rate / 1000 * (2 if self.encoding == L16 else 1)

    def to_wire(self, pcm: bytes, rate: int) -> bytes:
        """PCM16 at ``rate`` (a reply sentence) as this format's bytes."""
        pcm = resample(pcm, rate, self.rate)
        if self.encoding != L16:
            return encode_g711(pcm, self.encoding)
        return _swapped(pcm) if self.big_endian else pcm

    def to_pcm(self, data: bytes) -> bytes:
        """This format's bytes as PCM16 at their own rate."""
        if self.encoding != L16:
            return decode_g711(data, self.encoding)
        return _swapped(data) if self.big_endian else data


def _swapped(pcm: bytes) -> bytes:
    """16-bit samples with their two bytes swapped (big-endian ↔ little-endian)."""
    import numpy as np

    return bytes(np.frombuffer(pcm, dtype="<i2").byteswap().tobytes())


class Inbound:
    """One call's caller audio as the pipeline's 16 kHz PCM16, packet by packet.

    One streaming resampler for the whole call: resampling each 20 ms
    packet alone would start and end every packet at a filter edge.
    """

    __slots__ = ("format", "_stream")

    def __init__(self, audio: AudioFormat) -> None:
        self.format = audio
        self._stream: Any = None
        if audio.rate != SAMPLE_RATE:
            import numpy as np
            import soxr

            # Medium quality: it holds back 26 ms of audio where the default holds 66 ms, and
            # every ms held delays the end of the caller's turn; a phone line has no treble to keep.
            self._stream = soxr.ResampleStream(audio.rate, SAMPLE_RATE, 1, dtype=np.int16, quality="MQ")

    def feed(self, data: bytes) -> bytes:
        pcm = self.format.to_pcm(data)
        if self._stream is None:
            return pcm
        import numpy as np

        out: bytes = self._stream.resample_chunk(np.frombuffer(pcm, dtype="<i2")).astype("<i2").tobytes()
        return out
