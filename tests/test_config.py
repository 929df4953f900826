"""Config files are checked strictly; secrets come from the environment too."""

from __future__ import annotations

from pathlib import Path

import pytest

from livetx.config import ConfigError, from_mapping, load, unkeyed


def test_defaults_run_offline() -> None:
    config = load(None, environ={})
    assert (config.llm.provider, config.tts.provider, config.stt.provider) == ("echo", "espeak", "whisper")
    assert config.server.max_message_bytes > 0


@pytest.mark.parametrize(
    "data, message",
    [
        ({"web": {}}, "unknown section [web]"),
        ({"llm": {"modle": "x"}}, "[llm] unknown key 'modle'"),
        ({"llm": {"timeout": "5"}}, "[llm] timeout must be a number, got '5'"),
        ({"llm": {"history_turns": 2.5}}, "[llm] history_turns must be an integer"),
        ({"llm": {"history_turns": True}}, "[llm] history_turns must be an integer"),
        ({"tts": {"provider": "festival"}}, "[tts] provider must be one of 'espeak', 'piper', 'openai', 'none'"),
        ({"stt": {"keywords": ["on", 3]}}, "[stt] keywords must be a list of strings"),
        ({"stt": {"language": ["en"]}}, "[stt] language must be a string"),
        ({"server": {"ping_interval": -1}}, "[server] ping_interval must not be negative"),
        ({"llm": "openai"}, "[llm] must be a table"),
    ],
)
def test_mistakes_are_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping(data, environ={})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_api_keys_from_environment_and_never_in_repr() -> None:
    config = from_mapping(
        {"llm": {"provider": "openai"}, "tts": {"provider": "openai"},
         "stt": {"provider": "openai", "base_url": "http://127.0.0.1:9000/v1"}},
        environ={"LIVETX_LLM_API_KEY": "sk-llm-secret"},
    )
    assert config.llm.api_key == "sk-llm-secret"
    assert config.tts.api_key == "sk-llm-secret"  # same service, same key
    assert config.stt.api_key is None  # another host never gets it
    assert "sk-llm-secret" not in repr(config)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[llm\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)
    good = tmp_path / "good.toml"
    good.write_text('[llm]\nprovider = "openai"\ntimeout = 5\n')
    assert load(good, environ={}).llm.timeout == 5.0


def test_a_hosted_service_without_a_key_is_warned_about() -> None:
    hosted = {"llm": {"provider": "openai"}, "stt": {"provider": "openai", "base_url": "http://127.0.0.1:9000/v1"},
              "tts": {"provider": "openai", "base_url": "http://localhost:8000/v1"}}
    assert unkeyed(from_mapping(hosted, environ={})) == [
        "[llm] provider 'openai' at https://api.openai.com/v1 has no api_key: set LIVETX_LLM_API_KEY "
        "or [llm] api_key, or every request to it will be refused"]  # services on this machine may need none
    assert unkeyed(from_mapping(hosted, environ={"LIVETX_LLM_API_KEY": "sk-x"})) == []
    assert unkeyed(from_mapping({}, environ={})) == []  # the offline engines need no key
