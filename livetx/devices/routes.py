"""The devices' routes, made from ``[devices]``: the OTA endpoint and the WebSocket the boards use.

And the watch on the registry that closes a revoked board's open socket and
sends reboots: the caller starts it with the server, and feeds it what a
cluster's pub/sub says another node revoked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from livetx.config import Config, ConfigError
from livetx.devices.ota import DeviceOta
from livetx.devices.registry import DeviceWatch, open_registry
from livetx.devices.socket import DeviceFactory
from livetx.devices.tokens import DeviceTokens
from livetx.domain import Engines, MemoryOpener
from livetx.fences.twisted_web import Upgrade
from livetx.live.frames import FrameError
from livetx.live.settings import Settings, updated
from livetx.metrics import ServerMetrics
from livetx.web.connections import ConnectionTracker

#: The firmware's OTA URL is set to ``http(s)://HOST/xiaozhi/ota/`` (as the community servers serve it).
OTA_PATH = "/xiaozhi/ota"
#: The WebSocket the OTA endpoint points the boards at.
SOCKET_PATH = "/xiaozhi/v1/"
#: The size of an ESP32 eFuse HMAC key.
HMAC_KEY_BYTES = 32


@dataclass(frozen=True)
class DeviceParts:
    routes: dict[str, Resource]
    #: Started with the server: revocations close sockets, reboots are sent.
    watch: DeviceWatch


def device_routes(
    config: Config, *, secret: str, data_dir: Path, engines: Engines, connections: ConnectionTracker,
    clock: IReactorTime, metrics: ServerMetrics, memories: MemoryOpener | None, database: Any = None,
) -> DeviceParts:
    """The routes and the registry's watch; ``ConfigError`` for bad turn settings.

    ``database`` is the store's PostgreSQL pool with ``[store] url``: the
    registry is then the database's, shared by every node.
    """
    section = config.devices
    try:
        updated(Settings(), {**section.turn, "turn_detection": "server"})
    except FrameError as e:
        raise ConfigError(f"[devices.turn] {e.message}") from None
    keys = {}
    for serial, key in section.hmac_keys.items():
        try:
            keys[serial] = bytes.fromhex(key)
        except ValueError:
            raise ConfigError(f"[devices.hmac_keys] the key of {serial!r} is not hex") from None
        if len(keys[serial]) != HMAC_KEY_BYTES:
            raise ConfigError(f"[devices.hmac_keys] the key of {serial!r} is not {HMAC_KEY_BYTES} bytes "
                              f"(an eFuse HMAC key is 256 bits)")
    tokens = DeviceTokens(secret, section.token_days * 86400, clock)
    registry = open_registry(config.store.url, data_dir, database)
    socket = DeviceFactory(
        tokens=tokens, registry=registry, engines=engines, limits=config.server, connections=connections,
        clock=clock, metrics=metrics, endpoint=SOCKET_PATH, output_rate=section.output_rate,
        turn=dict(section.turn), tools=config.tools, memories=memories, wake_words=section.wake_words,
    )
    watch = DeviceWatch(registry, clock)
    watch.subscribe(socket.close_devices, socket.reboot_devices)
    routes = {
        OTA_PATH: DeviceOta(registry=registry, tokens=tokens, clock=clock, public_url=section.public_url,
                            socket_path=SOCKET_PATH, keys=keys, protocol_version=section.protocol_version),
        SOCKET_PATH: cast(Resource, Upgrade(socket)),
    }
    return DeviceParts(routes, watch)
