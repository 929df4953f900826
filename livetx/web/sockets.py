"""What every socket endpoint gets: Autobahn's limits, the resume journal, and the test-only echo.

:mod:`livetx.web.protocol` is the Live API's socket; these are the pieces
around it that do not depend on it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.interfaces import IReactorTime

from livetx import __version__
from livetx.config import ServerConfig

if TYPE_CHECKING:  # resume's modules load with the first socket that opts in
    from livetx.live.journal import Journals


class EchoProtocol(WebSocketServerProtocol):
    """Test only: echoes every message, so a conformance suite exercises our stack."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def echo_factory(limits: ServerConfig) -> WebSocketServerFactory:
    """The echo endpoint, with exactly the limits every real endpoint gets."""
    factory = WebSocketServerFactory(server=f"livetx/{__version__}")
    factory.protocol = EchoProtocol
    apply_limits(factory, limits)
    return factory


def memory_journals(clock: IReactorTime, seconds: float = 120.0, limit: int = 2000) -> Callable[[], Journals]:
    """One process's resume journal, made (and its module imported) for the first socket that opts in."""

    @functools.cache
    def made() -> Journals:
        from livetx.live.journal import MemoryJournals

        return MemoryJournals(clock, seconds, limit)

    return made


def apply_limits(factory: WebSocketServerFactory, limits: ServerConfig) -> None:
    """Autobahn's defaults are unlimited; every socket livetx serves gets these."""
    factory.setProtocolOptions(
        maxFramePayloadSize=limits.max_frame_bytes,
        maxMessagePayloadSize=limits.max_message_bytes,
        openHandshakeTimeout=limits.handshake_timeout,
        closeHandshakeTimeout=limits.close_timeout,
        autoPingInterval=limits.ping_interval,
        autoPingTimeout=limits.ping_timeout,
        autoFragmentSize=0,
        failByDrop=False,
        perMessageCompressionAccept=lambda offers: None,
        webStatus=False,  # no HTML status page (it names the Autobahn version)
    )
