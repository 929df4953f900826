"""The telephony routes, made from ``[telephony]``: one stream socket per carrier, and its answer webhook."""

from __future__ import annotations

import importlib
from typing import cast

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from livetx.config import Config, ConfigError
from livetx.domain import Engines, MemoryOpener
from livetx.errors import FrameError
from livetx.fences.twisted_web import Upgrade
from livetx.live.settings import Settings, updated
from livetx.metrics import ServerMetrics
from livetx.telephony import Carrier
from livetx.telephony.call import session_frames
from livetx.telephony.socket import CallFactory
from livetx.telephony.tokens import CallTokens
from livetx.telephony.webhook import Answering, AnswerWebhook
from livetx.web.connections import ConnectionTracker

#: Where a carrier's stream socket is served.
STREAM_PATH = "/telephony/{carrier}/stream"
#: Where a carrier's answer webhook is served (the number's "a call comes in" URL).
VOICE_PATH = "/telephony/{carrier}/voice"


def carrier(name: str) -> Carrier:
    """A carrier module's ``CARRIER`` (one module per carrier: adding one is adding a module)."""
    found: Carrier = importlib.import_module(f"livetx.telephony.{name}").CARRIER
    return found


def answering(name: str) -> Answering:
    """A carrier module's ``ANSWER``: how its webhook is signed and answered."""
    found: Answering = importlib.import_module(f"livetx.telephony.{name}").ANSWER
    return found


def telephony_routes(
    config: Config, *, secret: str, engines: Engines, connections: ConnectionTracker, clock: IReactorTime,
    metrics: ServerMetrics, memories: MemoryOpener | None,
) -> dict[str, Resource]:
    """Path → resource for every configured carrier; ``ConfigError`` for bad turn settings."""
    section = config.telephony
    try:
        updated(Settings(), {**section.turn, "turn_detection": "server"})
    except FrameError as e:
        raise ConfigError(f"[telephony.turn] {e.message}") from None
    tokens = CallTokens(secret, section.token_seconds, clock)
    frames = session_frames(dict(section.turn))
    routes: dict[str, Resource] = {}
    for name in dict.fromkeys(section.carriers):
        path = STREAM_PATH.format(carrier=name)
        routes[path] = cast(Resource, Upgrade(CallFactory(
            carrier=carrier(name), tokens=tokens, engines=engines, limits=config.server, telephony=section,
            tools=config.tools, connections=connections, clock=clock, metrics=metrics, endpoint=path,
            memories=memories, session_frames=frames,
        )))
        signing = section.secret(name)
        if signing is not None:  # Twilio's is required; the others' webhooks are served once their secret is set
            routes[VOICE_PATH.format(carrier=name)] = AnswerWebhook(
                answering=answering(name), secret=signing, public_url=section.public_url, stream_path=path,
                tokens=tokens, usernames=section.usernames, clock=clock)
    return routes
