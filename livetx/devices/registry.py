"""Which boards may talk to this server: a small JSON file in the data dir, or PostgreSQL's ``devices`` table.

A board first asks the OTA endpoint with its ``Device-Id`` (MAC) and
``Client-Id`` (a UUID the firmware keeps in NVS). An unknown pair is
recorded ``pending`` with a six-digit activation code, which the firmware
shows on its screen and speaks; the operator approves it with
``livetx devices approve CODE``. Only an ``approved`` board gets a
WebSocket token, and every connection checks the board is still approved.
A revocation also ends the sockets a board holds: :class:`DeviceWatch`
looks at the registry every half second and tells the socket endpoint which
approved boards are no longer approved, and which an operator asked to
reboot (``livetx devices reboot``).

Where the registry lives follows the store: the data dir's file for one
box (and ``--workers`` processes, which share the data dir), PostgreSQL's
table with ``[store] url``, so every node of a cluster sees the same
boards (:mod:`livetx.devices.pg_registry`).

The file is rewritten whole and atomically (write, then rename), under an
advisory lock (``flock`` on a lock file beside it), so the server recording
a new board and ``livetx devices approve`` never lose each other's change;
the server re-reads it when its modification time changes. A few boards per
server is the expected size: a file, not a table.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import orjson
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

_log = Logger()

DEVICES_FILE = "devices.json"
#: At most this many boards wait for approval at once (each unknown board that asks adds one).
MAX_PENDING = 100
#: Seconds between two looks at the registry for revocations and reboots.
WATCH_INTERVAL = 0.5
#: A reboot asked for longer ago than this is not sent (the board was not connected then).
REBOOT_SECONDS = 30.0
#: Why a board is refused at the handshake, or its open socket closed.
REVOKED = "Device revoked"
NOT_APPROVED = "Device not approved"

State = Literal["pending", "approved", "revoked"]


@dataclass(frozen=True)
class Device:
    device_id: str
    client_id: str
    state: State
    code: str
    #: Seconds since the epoch.
    created: float
    board: str = ""
    #: When an operator last asked for a reboot (seconds since the epoch; 0: never).
    reboot: float = 0.0
    #: The activation challenge the OTA endpoint gave the board (its HMAC answers it).
    challenge: str = ""

    @property
    def username(self) -> str:
        """The board is its own user: its history is its own (the MAC, lower case, colons kept)."""
        return f"device-{self.device_id.lower()}"


def refusal(known: Device | None, client_id: str | None = None) -> str | None:
    """Why this board may not hold a socket now, or None when it may."""
    if known is not None and known.state == "revoked":
        return REVOKED
    if known is None or known.state != "approved" or (client_id is not None and known.client_id != client_id):
        return NOT_APPROVED
    return None


def answers(known: Device | None, client_id: str) -> bool:
    """The board as recorded answers for this Client-Id: the same board, or one revoked whatever it is."""
    return known is not None and (known.client_id == client_id or known.state == "revoked")


def enrol(devices: dict[str, Device], device_id: str, client_id: str, board: str) -> Device | None:
    """Record a new (or reflashed) board pending in ``devices``; None when too many already wait."""
    key = device_id.lower()
    known = devices.get(key)
    if known is not None and answers(known, client_id):
        return known
    if known is None and sum(d.state == "pending" for d in devices.values()) >= MAX_PENDING:
        return None
    codes = {d.code for d in devices.values()}
    code = next(c for c in iter(lambda: f"{secrets.randbelow(10**6):06d}", None) if c not in codes)
    devices[key] = Device(key, client_id, "pending", code, time.time(), board, challenge=secrets.token_hex(16))
    return devices[key]


def find(devices: dict[str, Device], which: str) -> Device | None:
    """A board by its Device-Id or its activation code."""
    return devices.get(which.lower()) or next((d for d in devices.values() if d.code == which), None)


def apply(devices: dict[str, Device], which: str, change: Callable[[Device], Device]) -> Device | None:
    """The board named ``which`` (Device-Id or code), changed in ``devices``; None if there is none."""
    found = find(devices, which)
    if found is None:
        return None
    devices[found.device_id] = change(found)
    return devices[found.device_id]


def approved(device: Device) -> Device:
    return replace(device, state="approved")


class DeviceRegistry:
    """The boards this server knows, read from and written to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: float | None = None
        self._devices: dict[str, Device] = {}

    def _load(self) -> dict[str, Device]:
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._stamp, self._devices = None, {}
            return self._devices
        if stamp != self._stamp:
            raw = orjson.loads(self.path.read_bytes())
            self._devices = {d["device_id"]: Device(**d) for d in raw.get("devices", [])}
            self._stamp = stamp
        return self._devices

    def _save(self, devices: dict[str, Device]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}")  # one per writer
        tmp.write_bytes(orjson.dumps({"devices": [asdict(d) for d in devices.values()]}, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.path)
        self._stamp = None

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, Device]]:
        """The devices as they are now, for one writer at a time; saved on the way out."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            devices = dict(self._load())
            yield devices
            self._save(devices)

    @property
    def where(self) -> str:
        """Where the boards are kept, for the command line's messages."""
        return str(self.path)

    def refresh(self) -> Deferred[None]:
        """Bring what :meth:`list` and :meth:`get` read up to date (the file: re-read if it changed)."""
        self._load()
        return succeed(None)

    def list(self) -> list[Device]:
        return list(self._load().values())

    def get(self, device_id: str) -> Device | None:
        return self._load().get(device_id.lower())

    def ask(self, device_id: str, client_id: str, board: str = "") -> Device | None:
        """The board as known; a new one (or a reflashed one with a new Client-Id) is recorded pending.

        None when too many boards already wait: the unknown one is told nothing.
        """
        known = self.get(device_id)
        if answers(known, client_id):
            return known
        with self._changing() as devices:  # as it is now, under the lock
            return enrol(devices, device_id, client_id, board)

    def asking(self, device_id: str, client_id: str, board: str = "") -> Deferred[Device | None]:
        """:meth:`ask` for the server, which must not wait for a database."""
        known = self.get(device_id)
        if answers(known, client_id):
            return succeed(known)
        return self._later(lambda devices: enrol(devices, device_id, client_id, board))

    def approving(self, device_id: str) -> Deferred[Device | None]:
        """The board approved, for the server (its activation HMAC proved it)."""
        return self._later(lambda devices: apply(devices, device_id, approved))

    def _later(self, write: Callable[[dict[str, Device]], Device | None]) -> Deferred[Device | None]:
        """``write(devices)`` for the server: the file at once, a database off the reactor."""
        with self._changing() as devices:
            return succeed(write(devices))

    def set_state(self, which: str, state: State) -> Device | None:
        """A board by its activation code or its Device-Id, now in ``state``; None if there is none."""
        return self._change(which, lambda d: replace(d, state=state))

    def ask_reboot(self, which: str) -> Device | None:
        """Ask the server holding this board's socket to send it ``system`` ``reboot`` (within a second)."""
        return self._change(which, lambda d: replace(d, reboot=time.time()))

    def _change(self, which: str, change: Callable[[Device], Device]) -> Device | None:
        with self._changing() as devices:
            return apply(devices, which, change)


#: Why a board (Device-Id, Client-Id) may not hold a socket now, or None when it may.
Judge = Callable[[str, str], str | None]
#: Told to close the sockets of the boards the judge refuses, with its reason.
Closer = Callable[[Judge], None]
#: Told the boards an operator asked to reboot.
Rebooter = Callable[[frozenset[str]], None]


class DeviceWatch(TimerService):
    """Looks at the registry while the server runs: open sockets of boards no longer approved close, reboots go out.

    At every look each open socket is judged against the registry as it is
    now (revoked, or reflashed and pending again: closed with the reason it
    would be refused with), not against what the last look saw, so a board
    approved and revoked between two looks is not missed. A reboot asked
    since the last look, within :data:`REBOOT_SECONDS`, is sent to the
    board's socket. A cluster's pub/sub closes sockets at once through
    :meth:`publish`.
    """

    def __init__(self, registry: DeviceRegistry, clock: IReactorTime, interval: float = WATCH_INTERVAL) -> None:
        super().__init__(interval, self._look)
        self.clock = self._clock = clock
        self._registry = registry
        self._reboots: dict[str, float] | None = None
        self._closers: list[Closer] = []
        self._rebooters: list[Rebooter] = []

    def subscribe(self, close: Closer, reboot: Rebooter) -> None:
        self._closers.append(close)
        self._rebooters.append(reboot)

    def publish(self, device_id: str) -> None:
        """Close this board's sockets now (revoked on another node); the registry is read again too."""
        for close in self._closers:
            close(lambda board, _: REVOKED if board == device_id else None)
        self._registry.refresh().addErrback(self._unreadable)

    def _look(self) -> Deferred[None]:
        return self._registry.refresh().addCallbacks(lambda _: self._compare(), self._unreadable)

    def _unreadable(self, failure: object) -> None:
        # A registry that cannot be read now may be read next time (a failure would stop the loop).
        _log.warn("Could not read the devices registry: {failure}", failure=failure)

    def _compare(self) -> None:
        devices = {d.device_id: d for d in self._registry.list()}  # one read for every socket judged
        for close in self._closers:
            close(lambda device_id, client_id: refusal(devices.get(device_id), client_id))
        now = {i: d.reboot for i, d in devices.items()}
        known, self._reboots = self._reboots, now
        if known is None:  # the first look: a reboot asked before the server started is not news
            return
        recent = self._clock.seconds() - REBOOT_SECONDS
        reboots = frozenset(i for i, at in now.items() if at > recent and at > known.get(i, 0.0))
        if reboots:
            for reboot in self._rebooters:
                reboot(reboots)


def open_registry(url: str | None, data_dir: Path, database: Any = None) -> DeviceRegistry:
    """The registry where the store is: PostgreSQL's table with ``[store] url``, else the data dir's file.

    ``database`` (the server's :class:`livetx.store.postgres.Database`) makes a
    copy in memory, read now and refreshed by :class:`DeviceWatch`.
    """
    if not url:
        return DeviceRegistry(data_dir / DEVICES_FILE)
    from livetx.devices.pg_registry import PostgresDeviceRegistry

    registry = PostgresDeviceRegistry(url, database)
    if database is not None:
        registry.load()
    return registry
