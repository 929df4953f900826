"""Build the configured providers; each section's ``provider`` key picks one.

Only the configured engines' modules are imported: a server never carries
the code of the engines it does not use. The wiring sits above what it
wires (providers, tools, the archive, :class:`livetx.domain.Engines`),
beside :mod:`livetx.service`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, cast

from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime

from livetx.config import Config, ConfigError, require
from livetx.domain import Engines
from livetx.providers.openai import OpenAIChat, OpenAISpeech, OpenAITranscriber

Maker = Callable[[Any, HTTPClient, Any], Any]


def _engine(module: str, name: str) -> Maker:
    """The constructor ``name`` of ``module``, imported when it is first called."""

    def make(section: Any, http: HTTPClient, reactor: Any) -> Any:
        return getattr(importlib.import_module(module), name)(section, http, reactor)

    return make


def _echo(section: Any, http: HTTPClient, reactor: Any) -> Any:
    from livetx.providers.echo import EchoChat

    return EchoChat(reactor, section.echo_delay)


#: provider name → constructor(section, http, reactor); ``none`` means no engine.
LLMS: dict[str, Maker] = {"echo": _echo, "openai": OpenAIChat}
SYNTHESIZERS: dict[str, Maker] = {
    "espeak": _engine("livetx.providers.espeak", "EspeakSpeech"),
    "piper": _engine("livetx.providers.piper", "PiperSpeech"),
    "openai": OpenAISpeech,
}
RECOGNIZERS: dict[str, Maker] = {
    "pocketsphinx": _engine("livetx.providers.sphinx", "SphinxRecognizer"),
    "whisper": _engine("livetx.providers.whisper", "WhisperRecognizer"),
    "openai": OpenAITranscriber,
}


#: Engines that need a module of their own: provider → (module, what to install).
NEEDS: dict[str, tuple[str, str]] = {
    "espeak": ("espeakng_loader", "espeakng-loader"),
    "piper": ("piper", "livetx[piper]"),
    "pocketsphinx": ("pocketsphinx", "pocketsphinx"),
    "whisper": ("faster_whisper", "faster-whisper"),
}


def _need_path(section: str, key: str, value: str | None, what: str) -> None:
    if not value:
        raise ConfigError(f"[{section}] {key} must name {what}")
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"[{section}] {key} {value!r} does not exist")


def check(config: Config) -> None:
    """Stop start-up with one line when a configured engine cannot work at all."""
    for name in ("tts", "stt"):
        provider = getattr(config, name).provider
        if provider in NEEDS:
            module, package = NEEDS[provider]
            require(f"[{name}] provider {provider!r}", (module,), package)
    if config.tts.provider == "piper":
        _need_path("tts", "model", config.tts.model, "a Piper voice (.onnx file)")
    _check_voice(config)
    if config.tts.voices is not None and config.tts.provider != "openai":
        raise ConfigError(f'[tts] voices is for provider = "openai": {config.tts.provider} offers the voices it has')
    if config.stt.provider == "whisper":
        from livetx.providers import whisper

        whisper.check(config.stt)
    if config.stt.provider != "pocketsphinx" and (config.stt.grammar or config.stt.keywords):
        key = "grammar" if config.stt.grammar else "keywords"
        raise ConfigError(f'[stt] {key} is for PocketSphinx: add provider = "pocketsphinx" to [stt]')
    if config.stt.provider == "pocketsphinx" and config.stt.grammar is not None:
        _need_path("stt", "grammar", config.stt.grammar, "a JSGF grammar file")
    if config.tools.mcp:
        require("[[tools.mcp]]", ("mcp",), "livetx[mcp]")
    if config.tools.enabled:  # loads the tools once, so a bad name stops start-up here
        from twisted.internet.task import Clock

        from livetx.tools.registry import load_tools

        load_tools(config.tools, cast(IReactorTime, Clock()))  # nothing is called at start-up


def _check_voice(config: Config) -> None:
    """An unknown ``[tts] voice`` stops start-up, rather than speak in some other voice."""
    voice, provider = config.tts.voice, config.tts.provider
    problem = None
    if voice is not None and provider == "espeak":
        from livetx.providers import espeak

        problem = espeak.check_voice(voice)
    elif voice is not None and provider == "piper" and config.tts.model:
        from livetx.providers import piper

        problem = piper.check_voice(config.tts.model, voice)
    if problem is not None:
        raise ConfigError(f"[tts] voice {voice!r} {problem}")


def _make(table: dict[str, Maker], section: Any, http: HTTPClient, reactor: Any) -> Any:
    maker = table.get(section.provider)
    return None if maker is None else maker(section, http, reactor)


def _recognizer(config: Config, http: HTTPClient, reactor: Any, data_dir: Path | None) -> Any:
    """The configured recognizer; Whisper joins its bundled model once per user (the data dir without a cache)."""
    if config.stt.provider == "whisper" and data_dir is not None:
        from livetx.providers.whisper import WhisperRecognizer, model_cache

        return WhisperRecognizer(config.stt, http, reactor, cache=model_cache(data_dir / "models"))
    return _make(RECOGNIZERS, config.stt, http, reactor)


def _with_tools(llm: Any, config: Config, reactor: Any, mcp: Any = None) -> Any:
    """The model, offered the enabled tools when there are any and it can call them.

    With ``[tools] enabled`` empty and no ``[[tools.mcp]]`` nothing of the
    tool code is imported and turns go straight to the model, as before.
    ``mcp``: the MCP servers (:class:`livetx.tools.mcp_servers.MCPTools`),
    connected here so that their tools join the registry.
    """
    if not config.tools.enabled and mcp is None:
        return llm
    from livetx.tools import ToolCallingModel
    from livetx.tools.loop import ToolingModel
    from livetx.tools.registry import load_tools

    if not isinstance(llm, ToolCallingModel):  # a model that cannot be offered tools
        return llm
    registry = load_tools(config.tools, reactor)
    if mcp is not None:
        mcp.connect(registry.offer)
    return ToolingModel(llm, registry, config.tools, reactor)


def build_engines(
    config: Config, http: HTTPClient, reactor: Any, data_dir: Path | None = None, mcp: Any = None,
) -> Engines:
    """Everything the live sessions of one server share (``mcp``: see :func:`_with_tools`)."""
    archive = None
    if config.stt.keep_audio and data_dir is not None:
        from livetx.archive import AudioArchive

        archive = AudioArchive(data_dir / "audio", reactor)
    return Engines(
        llm=_with_tools(_make(LLMS, config.llm, http, reactor), config, reactor, mcp),
        tts=_make(SYNTHESIZERS, config.tts, http, reactor),
        stt=_recognizer(config, http, reactor, data_dir),
        system_prompt=config.llm.system_prompt,
        history_turns=config.llm.history_turns,
        context_bytes=config.llm.context_bytes,
        vision=config.llm.vision,
        tts_concurrency=config.tts.concurrency,
        max_segment_seconds=config.stt.max_segment_seconds,
        keep_audio=archive.keep if archive is not None else None,
        turn_end=_turn_end(reactor),
        speculative=config.llm.speculative,
    )


def _turn_end(reactor: Any) -> Any:
    """Smart Turn, when the ``turn`` extra installed its model (nothing loads until a session asks)."""
    from livetx.providers.smart_turn import SmartTurn, model_path

    return SmartTurn(reactor) if model_path() is not None else None

