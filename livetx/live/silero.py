"""Silero VAD as a frame classifier for talk mode's voice detector.

faster-whisper's wheel carries the Silero voice activity model (ONNX) and
onnxruntime comes with it, so this detector costs no download. Where
WebRTC's detector (PocketSphinx's) judges each frame by its spectrum and
energy, Silero is a small neural network trained to tell speech from noise,
music and clicks; see benchmarks/RESULTS.md for what that buys, and what it
costs per frame.

The network is stateful: each 32 ms frame (512 samples at 16 kHz) is judged
with the recurrent state and the last 64 samples of the frames before it,
so one classifier serves one stream. This module is the one place that
knows the model's inputs and outputs.
"""

from __future__ import annotations

import importlib.resources
from typing import Any, Callable

#: Samples per frame (32 ms) and of context carried from one frame to the next: the model's own sizes at 16 kHz.
_FRAME = 512
_CONTEXT = 64
#: Speech probability above which a frame is speech (Silero's own default).
THRESHOLD = 0.5

_session: Any = None


def _model() -> Any:
    """One inference session per process, shared by every stream (it keeps no state itself)."""
    global _session
    if _session is None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1  # one frame is tiny: more threads only cost switching
        options.log_severity_level = 4
        model = importlib.resources.files("faster_whisper") / "assets" / "silero_vad_v6.onnx"
        _session = onnxruntime.InferenceSession(
            model.read_bytes(), providers=["CPUExecutionProvider"], sess_options=options
        )
    return _session


def silero_available() -> bool:
    """Whether the model and its runtime are installed (imports nothing heavy)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and \
        importlib.util.find_spec("faster_whisper") is not None


def silero_vad(threshold: float = THRESHOLD) -> tuple[Callable[[bytes], bool], int]:
    """A speech/non-speech classifier for one 16 kHz PCM16 stream, and the frame size it takes."""
    import numpy

    session = _model()
    state: dict[str, Any] = {
        "h": numpy.zeros((1, 1, 128), dtype=numpy.float32),
        "c": numpy.zeros((1, 1, 128), dtype=numpy.float32),
        "context": numpy.zeros(_CONTEXT, dtype=numpy.float32),
    }

    def is_speech(frame: bytes) -> bool:
        samples = numpy.frombuffer(frame, dtype="<i2").astype(numpy.float32) / 32768
        window = numpy.concatenate([state["context"], samples])[None, :]
        probability, state["h"], state["c"] = session.run(None, {"input": window, "h": state["h"], "c": state["c"]})
        state["context"] = samples[-_CONTEXT:]
        return float(numpy.asarray(probability).reshape(-1)[0]) > threshold

    return is_speech, _FRAME * 2
