"""Generated documentation stays in step with the code it describes."""

from __future__ import annotations

from pathlib import Path

from openapi_spec_validator import validate

from livetx.diagram import render
from livetx.errors import ErrorCode
from livetx.providers.base import LLMError, STTError, TTSError
from livetx.web.http_api import load_openapi
from livetx.web.site import WEBSOCKET_ROUTES

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_state_diagram_matches_the_table() -> None:
    committed = (DOCS / "state-machine.md").read_text()
    assert committed == render(), "run: python -m livetx.diagram > docs/state-machine.md"


def test_openapi_is_valid_and_lists_every_endpoint_and_code() -> None:
    spec = load_openapi()
    validate(spec)
    assert set(WEBSOCKET_ROUTES) <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    spec_codes = set(schemas["ErrorCode"]["enum"]) | set(schemas["ChatErrorFrame"]["properties"]["code"]["enum"])
    assert spec_codes <= set(ErrorCode), "the OpenAPI document names a code livetx does not have"
    assert {LLMError.code, TTSError.code, STTError.code} <= spec_codes


def test_every_error_code_is_documented() -> None:
    text = (DOCS / "protocol.md").read_text() + (DOCS / "http-api.md").read_text()
    missing = [code.value for code in ErrorCode if f"`{code.value}`" not in text]
    assert missing == []


def test_configuration_doc_covers_every_key() -> None:
    import dataclasses
    import typing

    from livetx.config import Config

    text = (DOCS / "configuration.md").read_text()
    missing = []
    for section, cls in typing.get_type_hints(Config).items():
        assert f"### `[{section}]`" in text, section
        missing += [f"[{section}] {f.name}" for f in dataclasses.fields(cls) if f"| `{f.name}` |" not in text]
    assert missing == []
