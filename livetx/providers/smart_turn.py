"""Smart Turn v3: is the speaker done, judged from how the utterance sounds.

Pipecat's Smart Turn v3.2 (BSD-2) is a small audio classifier (8.7 MB of
ONNX, a Whisper-tiny encoder) trained on where people end their turns: a
falling "... at seven." ends one, a trailing "... a table for" does not,
whatever the silence after it. The model file ships inside the
``pipecat-ai`` wheel; no lighter package on PyPI carries it (the others,
``smart-turn-livekit``, ``vox-smart-turn`` and
``vision-agents-plugins-smart-turn``, download it from Hugging Face at run
time), so it comes with the ``turn`` extra. Only the file is used: pipecat
itself is never imported (its import alone loads a logger and prints a
banner). The features are Whisper's log-mel, which faster-whisper computes.

Inference (12-60 ms) runs on a thread of its own, one at a time; the model
loads on the first question, so a server that never uses it stays small.
This module is the one place that knows the model's file, inputs and outputs.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from livetx.audio import SAMPLE_RATE
from livetx.threads import Worker

#: Where the model sits in the pipecat-ai distribution.
_MODEL = ("audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")
#: The model hears the last 8 s, zero-padded in front when the utterance is shorter.
WINDOW_SAMPLES = 8 * SAMPLE_RATE

_loaded: tuple[Any, Any] | None = None
_lock = threading.Lock()


def model_path() -> Path | None:
    """The ONNX file, when the ``turn`` extra is installed (finding it imports nothing)."""
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*_MODEL)
    return path if path.is_file() else None


def _model() -> tuple[Any, Any]:
    """Runs on the model's thread: the inference session and feature extractor, loaded once per process."""
    global _loaded
    with _lock:
        if _loaded is None:
            import onnxruntime
            from faster_whisper.feature_extractor import FeatureExtractor

            path = model_path()
            assert path is not None  # checked before a detector is made
            options = onnxruntime.SessionOptions()
            options.inter_op_num_threads = 1
            options.intra_op_num_threads = 1
            options.log_severity_level = 4
            session = onnxruntime.InferenceSession(
                str(path), providers=["CPUExecutionProvider"], sess_options=options
            )
            _loaded = session, FeatureExtractor(feature_size=80, chunk_length=WINDOW_SAMPLES // SAMPLE_RATE)
    return _loaded


def probability(pcm: bytes) -> float:
    """Runs on the model's thread: how likely the turn is over after ``pcm`` (16 kHz PCM16)."""
    import numpy

    session, features = _model()
    audio = numpy.frombuffer(pcm, dtype="<i2")[-WINDOW_SAMPLES:].astype(numpy.float32) / 32768
    audio = numpy.pad(audio, (WINDOW_SAMPLES - len(audio), 0))
    audio = (audio - audio.mean()) / numpy.sqrt(audio.var() + 1e-7)  # as the model was trained
    mel = features(audio, padding=0)[:, : WINDOW_SAMPLES // 160]
    (output,) = session.run(None, {"input_features": mel[None, :, :].astype(numpy.float32)})
    return float(numpy.asarray(output).reshape(-1)[0])


class SmartTurn:
    """The end-of-turn model for every session of a server (:class:`livetx.providers.base.TurnEndModel`)."""

    name = "smart-turn-v3.2"

    def __init__(self, reactor: Any) -> None:
        self._worker = Worker(reactor, "smart-turn", 1)

    def complete(self, pcm: bytes) -> Deferred[float]:
        return self._worker.run(probability, pcm)
