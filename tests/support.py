"""Run the real server on a loopback port and talk to it with a real client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS

from livetx.auth.tokens import issue_token
from livetx.storage import jwt_secret
from livetx.tap import Options, makeService

TIMEOUT = 10.0


class Waiting:
    """A test client's ``wait(ready)``: fires once ``ready()`` holds or the socket closed (checked on each ``_wake``)."""

    close_code: int | None
    _waiters: list[tuple[Callable[[], bool], Deferred[None]]]

    def gone(self) -> bool:
        return self.close_code is not None

    def wait(self, ready: Callable[[], bool], timeout: float = TIMEOUT) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if ready() or self.gone():
            d.callback(None)
            return d
        self._waiters.append((ready, d))
        return d.addTimeout(timeout, reactor)

    def _wake(self) -> None:
        """The client calls this on each message and on close."""
        for entry in list(self._waiters):
            ready, d = entry
            if ready() or self.gone():
                self._waiters.remove(entry)
                d.callback(None)


class RunningServer:
    """``twistd live`` in-process: the same Options and makeService, port 0."""

    def __init__(
        self, data_dir: Path, config_text: str | None = None, listen: str | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        args = ["--listen", listen or "tcp:0:interface=127.0.0.1", "--data-dir", str(data_dir), *(extra or [])]
        if config_text is not None:
            path = data_dir.parent / "livetx.toml"
            path.write_text(config_text)
            args += ["--config", str(path)]
        self.options = Options()
        self.options.parseOptions(args)
        self.service: IService = makeService(self.options, reactor)
        self.port = 0

    async def start(self) -> RunningServer:
        self.service.startService()
        for child in self.service:
            if isinstance(child, StreamServerEndpointService):
                listening = await child._waitingForPort
                self.port = listening.getHost().port
        return self

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()

    def token(self, username: str = "alice", ttl: float = 3600) -> str:
        return issue_token(jwt_secret(self.options["settings"], self.data_dir), username, ttl)

    def url(self, path: str, scheme: str = "ws", **query: str) -> str:
        suffix = f"?{urlencode(query)}" if query else ""
        return f"{scheme}://127.0.0.1:{self.port}{path}{suffix}"


class LiveClient(Waiting, WebSocketClientProtocol):
    """Records every frame; tests wait for the frames they expect."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, Any]] = []
        self.raw: list[tuple[bytes, bool]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.ready: Deferred[None] = Deferred()
        self.closed: Deferred[LiveClient] = Deferred()
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self._cursor = 0

    def onOpen(self) -> None:
        self.ready.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.raw.append((payload, isBinary))
        self.frames.append({"t": "binary", "data": payload} if isBinary else json.loads(payload))
        self._wake()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code, self.close_reason = code, reason
        if not self.ready.called:
            self.ready.callback(None)
        self._wake()
        if not self.closed.called:
            self.closed.callback(self)

    def gone(self) -> bool:
        return self.closed.called or self.close_code is not None

    def send(self, frame: Any) -> None:
        payload = frame if isinstance(frame, bytes) else json.dumps(frame).encode()
        self.sendMessage(payload)

    async def until(self, kind: str, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Frames from the cursor up to and including the next one of ``kind``."""

        def seen() -> bool:
            return any(frame_kind(f) == kind for f in self.frames[self._cursor :])

        await self.wait(seen, timeout)
        rest = self.frames[self._cursor :]
        if not seen():
            raise AssertionError(f"no {kind!r} frame; got {[frame_kind(f) for f in rest]} close={self.close_code}")
        index = next(i for i, f in enumerate(rest) if frame_kind(f) == kind)
        self._cursor += index + 1
        return rest[: index + 1]

    async def turn(self, text: str, timeout: float = TIMEOUT, **extra: Any) -> list[dict[str, Any]]:
        """Send a text turn; return its frames up to ``end``."""
        self.send({"t": "text_input", "text": text, **extra})
        return await self.until("end", timeout)

    async def next(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        count = self._cursor + 1
        await self.wait(lambda: len(self.frames) >= count, timeout)
        frame = self.frames[self._cursor]
        self._cursor += 1
        return frame

    async def close_and_wait(self) -> None:
        if not self.closed.called:
            self.sendClose(1000)
        await self.closed


def frame_kind(frame: dict[str, Any]) -> str:
    """Live frames say ``t``; chat events say ``type`` (chat errors say ``t``)."""
    return frame.get("t") or frame.get("type") or ""


def replied(frames: list[dict[str, Any]]) -> bool:
    """A turn that streamed a reply and ended."""
    return frames[-1]["t"] == "end" and any(f["t"] == "bot_delta_chunk" for f in frames)


async def open_socket(
    url: str, headers: dict[str, str] | None = None, tls: Any = None, **options: Any
) -> LiveClient:
    """Connect; return once the handshake is done or the server has closed the socket.

    ``options`` go to Autobahn's ``setProtocolOptions`` (compression offers, say).
    """
    factory = WebSocketClientFactory(url, headers=headers or {})
    factory.protocol = LiveClient
    if options:
        factory.setProtocolOptions(**options)
    endpoint: Any = TCP4ClientEndpoint(reactor, factory.host, factory.port, timeout=5)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    client: LiveClient = await endpoint.connect(factory)
    await client.ready.addTimeout(TIMEOUT, reactor)
    return client


async def connect(url: str, headers: dict[str, str] | None = None, tls: Any = None, **options: Any) -> LiveClient:
    """Open a socket that must be accepted."""
    client = await open_socket(url, headers, tls, **options)
    assert client.close_code is None, (client.close_code, client.close_reason, client.frames)
    return client
