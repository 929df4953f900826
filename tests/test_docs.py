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
    spec_codes = set(schemas["ErrorCode"]["enum"]) | set(schemas["ChatErrorCode"]["enum"])
    assert spec_codes <= set(ErrorCode), "the OpenAPI document names a code livetx does not have"
    assert {LLMError.code, TTSError.code, STTError.code} <= spec_codes


#: Codes only HTTP answers carry (livetx/errors.py, "HTTP API only"); every other one can reach a socket.
HTTP_ONLY = {ErrorCode.NOT_FOUND, ErrorCode.METHOD_NOT_ALLOWED, ErrorCode.TOO_LARGE, ErrorCode.UNSUPPORTED_MEDIA_TYPE}
#: Codes that are not errors: they mark another frame (livetx/errors.py says which).
NOTICES = {ErrorCode.NO_SPEECH}


def test_every_error_code_is_in_the_openapi_enums_where_it_can_be_sent() -> None:
    schemas = load_openapi()["components"]["schemas"]
    live, chat = set(schemas["ErrorCode"]["enum"]), set(schemas["ChatErrorCode"]["enum"])
    http = set(schemas["HTTPError"]["properties"]["code"]["enum"])
    assert {c.value for c in ErrorCode} - HTTP_ONLY - NOTICES <= live | chat, "a socket code missing from the socket enums"
    assert {c.value for c in HTTP_ONLY} <= http
    assert set(ErrorCode) - NOTICES == live | chat | http
    user_msg = schemas["UserMsg"]["properties"]["data"]["allOf"][1]["properties"]["code"]
    assert {user_msg["const"]} == NOTICES
    # A bad username is refused on both kinds of socket: a dashboard's (live frame) and an API key's (chat frame).
    assert ErrorCode.BAD_USER in live and ErrorCode.BAD_USER in chat
    assert ErrorCode.UNAUTHORIZED in live and ErrorCode.UNAUTHORIZED in chat  # a revoked key's sockets
    assert schemas["ChatEvent"]["properties"]["code"]["$ref"] == "#/components/schemas/ChatErrorCode"


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
