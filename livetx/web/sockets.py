"""What every socket endpoint gets: Autobahn's limits, the resume journal, and the test-only echo.

:mod:`livetx.web.protocol` is the Live API's socket; these are the pieces
around it that do not depend on it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from twisted.internet.interfaces import IReactorTime

from livetx import __version__
from livetx.config import ClusterConfig, ServerConfig

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


def memory_journals(clock: IReactorTime, cluster: ClusterConfig = ClusterConfig()) -> Callable[[], Journals]:
    """One process's resume journal, made (and its module imported) for the first socket that opts in."""

    @functools.cache
    def made() -> Journals:
        from livetx.live.journal import Budget, MemoryJournals

        return MemoryJournals(clock, cluster.resume_seconds, budget=Budget.of(cluster))

    return made


#: permessage-deflate, when ``[server] compression`` turns it on: 2 KiB windows and zlib's
#: memory level 4 make a compressing socket cost about 16 KiB of zlib state each way
#: (the defaults, 15 and 8, cost 256 KiB to compress alone), for most of the ratio on
#: JSON frames. The window the client compresses with is asked down to the same size.
DEFLATE_WINDOW_BITS = 11
DEFLATE_MEM_LEVEL = 4


def accept_deflate(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
    """Accept the client's first permessage-deflate offer, on small windows.

    What a client sends still counts against ``max_message_bytes`` once
    inflated, and is never inflated past it: Autobahn inflates a frame only
    up to what the message may still hold, and closes with 1009 beyond.
    """
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            asked = offer.request_max_window_bits  # 0: the client lets the server choose
            return PerMessageDeflateOfferAccept(
                offer,
                request_max_window_bits=DEFLATE_WINDOW_BITS if offer.accept_max_window_bits else 0,
                window_bits=min(DEFLATE_WINDOW_BITS, asked) if asked else DEFLATE_WINDOW_BITS,
                mem_level=DEFLATE_MEM_LEVEL,
            )
    return None


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
        perMessageCompressionAccept=accept_deflate if limits.compression else lambda offers: None,
        webStatus=False,  # no HTML status page (it names the Autobahn version)
    )
