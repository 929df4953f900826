"""``GET /api/v1/voices``: the voices a session may pick with ``session_update``'s ``voice``.

The page's voice picker reads it; any client may, without credentials, as
it may read ``/openapi.json``: the list says which speech engine runs and
nothing about anyone. The engine is asked on a thread, because eSpeak NG
loads on the first look (about 0.15 s, once per process) and the reactor
must not wait for that.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Request

from livetx.providers.base import SpeechSynthesizer
from livetx.web.replies import finish_async, json_body

PATH = "/api/v1/voices"


class VoicesResource(Resource):
    """Answers ``{"engine", "default", "voices", "variants"}``; no engine: an empty list."""

    isLeaf = True

    def __init__(self, tts: SpeechSynthesizer | None) -> None:
        super().__init__()
        self._tts = tts

    def render_GET(self, request: Request) -> Any:
        tts = self._tts
        if tts is None:
            return json_body(request, 200, {"engine": None, "default": None, "voices": [], "variants": []})
        return finish_async(request, deferToThread(tts.voices).addCallback(
            lambda voices: json_body(request, 200, {"engine": tts.name, **voices.json()})))


def voice_routes(tts: SpeechSynthesizer | None) -> dict[str, Resource]:
    """The voices' route, for ``build_site``'s ``routes``."""
    return {PATH: VoicesResource(tts)}
