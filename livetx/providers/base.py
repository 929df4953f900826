"""The small interfaces every model and speech engine sits behind.

Each call returns a Deferred; cancelling it must stop the work for real
(close the upstream HTTP connection, drop the queued job), because barge-in
depends on it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, NotRequired, Protocol, Sequence, TypedDict, runtime_checkable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from livetx.audio import duration_ms, read_wav, resample
# The engines' errors are defined with every other error; they are importable from here too.
from livetx.errors import LLMError as LLMError
from livetx.errors import ProviderError as ProviderError
from livetx.errors import STTError as STTError
from livetx.errors import TTSError as TTSError

_log = Logger()


class Message(TypedDict):
    """One entry of the conversation, in the chat-completions shape.

    ``content`` is text, or for a model that takes images a list of
    ``{"type": "text", ...}`` and ``{"type": "image_url", ...}`` items.
    """

    role: str
    content: str | list[dict[str, Any]]
    #: An assistant message that called tools, and a ``tool`` message's answer to one.
    tool_calls: NotRequired[list[dict[str, Any]]]
    tool_call_id: NotRequired[str]


def message_text(content: str | list[dict[str, Any]]) -> str:
    """The text of a message, whichever shape its content has."""
    if isinstance(content, str):
        return content
    return "".join(item.get("text", "") for item in content if item.get("type") == "text")


def message_bytes(message: Message) -> int:
    """A message's size as a request to the model carries it (JSON, UTF-8)."""
    return len(json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def newest_within(groups: Sequence[Sequence[Message]], budget: int) -> int:
    """How many of ``groups`` (oldest first), counted from the newest, fit in ``budget`` bytes together.

    The context's byte budget (``[llm] context_bytes``): whatever ``history_turns``
    allows, a conversation of long turns sends the model only its newest
    turns that fit, and the rest is never copied into a request.
    """
    used = 0
    for count, group in enumerate(reversed(groups)):
        used += sum(message_bytes(message) for message in group)
        if used > budget:
            return count
    return len(groups)


@runtime_checkable
class ChatModel(Protocol):
    """Streams a reply to a conversation."""

    #: Reported as the ``chat_model`` metric.
    model: str

    def stream(
        self, messages: Sequence[Message], on_delta: Callable[[str], None]
    ) -> Deferred[None]:
        """Call ``on_delta`` with each text piece as it arrives; fire when done."""


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for: ``arguments`` is the model's raw JSON text (see :mod:`livetx.tools`)."""

    id: str
    name: str
    arguments: str


@runtime_checkable
class ToolCallingModel(Protocol):
    """A chat model that can be offered tools (OpenAI-compatible function calling).

    Models without it (the echo model) are never offered tools.
    """

    model: str

    def stream_tools(
        self, messages: Sequence[Message], on_delta: Callable[[str], None],
        tools: Sequence[dict[str, Any]] | None,
    ) -> Deferred[list[ToolCall]]:
        """Stream a reply offering ``tools``; fire with the calls asked for (none: it answered)."""


@dataclass(frozen=True)
class Voices:
    """The voices an engine offers, of which a session picks one (``session_update``'s ``voice``).

    Read once, when first asked (an eSpeak NG list takes its engine's lock),
    so checking a session's choice costs a set look-up on the reactor.
    """

    #: Every voice the engine can speak in, in the order to offer them.
    names: tuple[str, ...]
    #: What a session speaks in until it picks another: ``[tts] voice``, else the engine's own.
    default: str
    #: eSpeak NG's variants, which may follow a voice after a ``+`` (``en-us+f3``).
    variants: tuple[str, ...] = ()

    def problem(self, voice: str) -> str | None:
        """Why the engine cannot speak as ``voice``, or None when it can."""
        if voice in self.names:
            return None
        base, plus, variant = voice.partition("+")
        if plus and base in self.names:
            if variant in self.variants:
                return None
            if not self.variants:
                return "has a variant, which this engine has none of"
            return f"has no variant {variant!r}; the variants are {', '.join(self.variants[:8])}, …"
        return f"is not one of the {len(self.names)} voices of this server (GET /api/v1/voices lists them)"

    def json(self) -> dict[str, Any]:
        return {"default": self.default, "voices": list(self.names), "variants": list(self.variants)}


@runtime_checkable
class SpeechSynthesizer(Protocol):
    """Turns one sentence into one complete, playable audio file."""

    #: Reported as the ``tts`` metric.
    name: str

    def synthesize(self, text: str, voice: str | None = None) -> Deferred[bytes]:
        """Fire with the audio file's bytes (WAV unless configured otherwise).

        ``voice``: one of :meth:`voices`, checked by the caller (a session's
        ``session_update``); None speaks in the default one.
        """

    def voices(self) -> Voices:
        """The voices a session may pick from."""


@runtime_checkable
class SpeechRecognizer(Protocol):
    """Turns one captured segment into text."""

    #: Reported as the ``stt`` metric.
    name: str

    def transcribe(self, wav: bytes) -> Deferred[str]:
        """Fire with the transcript of a 16 kHz mono PCM16 WAV file."""


@runtime_checkable
class PartialRecognizer(Protocol):
    """A recognizer cheap and local enough to run again and again while the user speaks.

    Optional: talk mode sends ``user_partial`` frames only for engines that
    have it (PocketSphinx); a hosted service would be paid per call.
    """

    def partial(self, pcm: bytes) -> Deferred[str]:
        """Fire with a transcript of an unfinished utterance (16 kHz mono PCM16)."""


@runtime_checkable
class TurnEndModel(Protocol):
    """Tells from how an unfinished utterance sounds whether the speaker is done (Smart Turn).

    Optional: talk mode's semantic end of turn (``end_of_turn: semantic``) needs one.
    """

    #: Named in logs and in the refusal when it is missing.
    name: str

    def complete(self, pcm: bytes) -> Deferred[float]:
        """Fire with the probability that the turn is over, given 16 kHz mono PCM16 ending now."""


def recognizer_input(wav: bytes) -> bytes:
    """A segment as 16 kHz mono PCM for an offline recognizer, or ``STTError``."""
    try:
        pcm, rate = read_wav(wav)
    except ValueError as e:
        raise STTError(f"cannot read the audio: {e}") from None
    return resample(pcm, rate)


def reported(engine: str, wav: bytes, transcript: Deferred[str]) -> Deferred[str]:
    """``transcript``, logged when it comes: which engine, how much audio, how
    long it took (waiting for the engine included) and how many words; never the words."""
    started = time.monotonic()

    def log(text: str) -> str:
        _log.info(
            "Transcribed {audio_seconds:.2f} s of audio with {engine} in {stt_seconds:.2f} s: {words} words",
            engine=engine, audio_seconds=(duration_ms(wav) or 0) / 1000,
            stt_seconds=time.monotonic() - started, words=len(text.split()),
        )
        return text

    return transcript.addCallback(log)
