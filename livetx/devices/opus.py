"""Opus both ways, with libopus through PyAV (installed with faster-whisper): no codec written here.

A device sends 16 kHz mono Opus in packets of ``frame_duration`` ms
(60 by default) and plays what the server announced in its ``hello``
(24 kHz mono, 60 ms packets here). One decoder and one encoder per
connection, because Opus carries state from packet to packet; libswresample
(also through PyAV) changes rates on a stream, so packet edges do not click.
``benchmarks/devices_bench.py`` measures their cost per device-minute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from livetx.audio import SAMPLE_RATE

if TYPE_CHECKING:
    import av

#: What the server plays to a device unless ``[devices] output_rate`` says otherwise.
OUTPUT_RATE = 24000
#: The packet length the server sends (the firmware's default ``OPUS_FRAME_DURATION_MS``).
FRAME_MS = 60


class OpusError(Exception):
    """A packet libopus cannot decode."""


class Decoder:
    """A device's Opus packets as the pipeline's 16 kHz PCM16."""

    def __init__(self) -> None:
        import av

        self._codec: Any = av.CodecContext.create("libopus", "r")
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

    def decode(self, packet: bytes) -> bytes:
        import av

        if not packet:
            raise OpusError("an empty packet")
        try:
            frames = self._codec.decode(av.Packet(packet))
        except av.error.FFmpegError as e:
            raise OpusError(f"not an Opus packet ({e.strerror})") from None
        return b"".join(_pcm(f) for frame in frames for f in self._resampler.resample(frame))


class Encoder:
    """Reply speech as Opus packets of :data:`FRAME_MS` at ``rate``, ready to frame and send."""

    def __init__(self, rate: int = OUTPUT_RATE, frame_ms: int = FRAME_MS) -> None:
        import av

        codec: Any = av.CodecContext.create("libopus", "w")
        codec.sample_rate = rate
        codec.layout = "mono"
        codec.format = "s16"
        codec.options = {"frame_duration": str(frame_ms), "application": "voip"}
        codec.open()
        self._codec = codec
        self.rate = rate
        self._samples = rate * frame_ms // 1000
        self._resamplers: dict[int, Any] = {}

    def encode(self, pcm: bytes, rate: int) -> list[bytes]:
        """PCM16 mono at ``rate`` (one sentence) as whole packets; the last is padded with silence."""
        import numpy as np

        resampler = self._resamplers.get(rate)
        if resampler is None:
            import av

            resampler = self._resamplers[rate] = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
        samples = np.frombuffer(pcm, dtype="<i2")
        frames = resampler.resample(_frame(samples, rate)) + resampler.resample(None)
        self._resamplers.pop(rate)  # flushed: a sentence is a whole; the next starts a fresh stream
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in frames] or [np.zeros(0, np.int16)])
        pad = -len(audio) % self._samples
        audio = np.concatenate([audio, np.zeros(pad, dtype=np.int16)])
        packets: list[bytes] = []
        for i in range(0, len(audio), self._samples):
            frame = _frame(audio[i:i + self._samples], self.rate)
            packets += [bytes(p) for p in self._codec.encode(frame)]
        return packets


def _frame(samples: Any, rate: int) -> av.AudioFrame:
    import av

    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    return frame


def _pcm(frame: Any) -> bytes:
    data: bytes = frame.to_ndarray().astype("<i2").tobytes()
    return data
