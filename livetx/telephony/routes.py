"""The telephony routes, made from ``[telephony]``: one stream socket per carrier, and Twilio's webhook."""

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
from livetx.telephony.webhook import TwilioVoice
from livetx.web.connections import ConnectionTracker

#: Where a carrier's stream socket is served.
STREAM_PATH = "/telephony/{carrier}/stream"
#: Twilio's incoming-call webhook.
TWILIO_VOICE_PATH = "/telephony/twilio/voice"


def carrier(name: str) -> Carrier:
    """A carrier module's ``CARRIER`` (one module per carrier: adding one is adding a module)."""
    found: Carrier = importlib.import_module(f"livetx.telephony.{name}").CARRIER
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
    if "twilio" in section.carriers:
        assert section.twilio_auth_token is not None  # checked with the config
        routes[TWILIO_VOICE_PATH] = TwilioVoice(
            auth_token=section.twilio_auth_token, public_url=section.public_url,
            stream_path=STREAM_PATH.format(carrier="twilio"), tokens=tokens, usernames=section.usernames)
    return routes
