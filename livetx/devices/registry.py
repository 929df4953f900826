"""Which boards may talk to this server: a small JSON file in the data dir, shared by the server and ``livetx devices``.

A board first asks the OTA endpoint with its ``Device-Id`` (MAC) and
``Client-Id`` (a UUID the firmware keeps in NVS). An unknown pair is
recorded ``pending`` with a six-digit activation code, which the firmware
shows on its screen and speaks; the operator approves it with
``livetx devices approve CODE``. Only an ``approved`` board gets a
WebSocket token, and every connection checks the board is still approved,
so ``livetx devices revoke`` shuts a board out at its next connection
(a board opens its socket per conversation) even with a valid token.

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
from typing import Iterator, Literal

import orjson

DEVICES_FILE = "devices.json"
#: At most this many boards wait for approval at once (each unknown board that asks adds one).
MAX_PENDING = 100

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

    @property
    def username(self) -> str:
        """The board is its own user: its history is its own (the MAC, lower case, colons kept)."""
        return f"device-{self.device_id.lower()}"


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

    def list(self) -> list[Device]:
        return list(self._load().values())

    def get(self, device_id: str) -> Device | None:
        return self._load().get(device_id.lower())

    def ask(self, device_id: str, client_id: str, board: str = "") -> Device | None:
        """The board as known; a new one (or a reflashed one with a new Client-Id) is recorded pending.

        None when too many boards already wait: the unknown one is told nothing.
        """
        key = device_id.lower()
        known = self._load().get(key)
        if known is not None and (known.client_id == client_id or known.state == "revoked"):
            return known
        with self._changing() as devices:
            known = devices.get(key)  # as it is now, under the lock
            if known is not None and (known.client_id == client_id or known.state == "revoked"):
                return known
            if known is None and sum(d.state == "pending" for d in devices.values()) >= MAX_PENDING:
                return None
            codes = {d.code for d in devices.values()}
            code = next(c for c in iter(lambda: f"{secrets.randbelow(10**6):06d}", None) if c not in codes)
            devices[key] = Device(key, client_id, "pending", code, time.time(), board)
            return devices[key]

    def set_state(self, which: str, state: State) -> Device | None:
        """A board by its activation code or its Device-Id, now in ``state``; None if there is none."""
        with self._changing() as devices:
            found = devices.get(which.lower()) or next((d for d in devices.values() if d.code == which), None)
            if found is None:
                return None
            devices[found.device_id] = replace(found, state=state)
            return devices[found.device_id]
