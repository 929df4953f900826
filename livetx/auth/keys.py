"""Open API keys: ``abk_`` + 256 random bits, kept only as SHA-256 digests.

A fast hash is right here: the keys are random, not passwords, so there is
nothing to brute-force. The file is re-read when it changes, so keys made or
revoked with ``livetx keys`` take effect on a running server (with a
PostgreSQL store, :mod:`livetx.auth.pg_keys` keeps them in the database).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import unicodedata
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from livetx.auth._files import write_private

_log = Logger()

KEYS_FILE = "api_keys.json"
PREFIX = "abk_"
SCOPES = frozenset({"chat", "config", "file", "im"})
MAX_USERNAME = 64
#: Why a revoked key is refused or its sockets closed, wherever that happens (one reason on every node).
REVOKED = "API key revoked"


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str | None
    scopes: tuple[str, ...]
    sha256: str
    prefix: str
    created_at: str
    revoked_at: str | None = None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class CorruptKeyFile(Exception):
    """The key file exists but cannot be read; refusing to overwrite it."""


class KeyStore:
    """Making, listing, revoking and checking keys; a backend keeps the records.

    Here the backend is the key file of one data dir; with ``[store] url``
    it is PostgreSQL (:class:`livetx.auth.pg_keys.PostgresKeyStore`), so every
    node sees the same keys.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / KEYS_FILE
        self._seen: tuple[int, int] | None = None
        self._records: tuple[KeyRecord, ...] = ()

    def _read(self) -> tuple[KeyRecord, ...]:
        try:
            raw = json.loads(self.path.read_bytes())
            return tuple(
                KeyRecord(**{**entry, "scopes": tuple(entry["scopes"])}) for entry in raw["keys"]
            )
        except FileNotFoundError:
            return ()
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptKeyFile(f"{self.path} is not a livetx key file") from e

    def _write(self, records: Sequence[KeyRecord]) -> None:
        data = {"keys": [asdict(r) | {"scopes": list(r.scopes)} for r in records]}
        write_private(self.path, json.dumps(data, indent=2).encode("utf-8"))

    def _add(self, record: KeyRecord) -> None:
        self._write(self._read() + (record,))

    def _revoke(self, key_id: str) -> bool:
        records = self._read()
        if not any(r.id == key_id and r.revoked_at is None for r in records):
            return False
        self._write([replace(r, revoked_at=_now()) if r.id == key_id else r for r in records])
        return True

    def _current(self) -> tuple[KeyRecord, ...]:
        """Cached records, re-read when the file's mtime or size changes."""
        try:
            st = os.stat(self.path)
            seen = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = (0, -1)
        if seen != self._seen:
            try:
                self._records = self._read()
            except CorruptKeyFile:
                _log.error("API key file {path} is unreadable; no key is accepted", path=str(self.path))
                self._records = ()
            self._seen = seen
        return self._records

    def create(self, scopes: Sequence[str], name: str | None = None) -> tuple[KeyRecord, str]:
        """Make a key; the plaintext is returned this once and never stored."""
        unknown = set(scopes) - SCOPES
        if not scopes or unknown:
            raise ValueError(f"scopes must be among {sorted(SCOPES)}, got {sorted(scopes)}")
        key = PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            id=secrets.token_hex(4),
            name=name,
            scopes=tuple(dict.fromkeys(scopes)),
            sha256=_digest(key),
            prefix=key[:8],
            created_at=_now(),
        )
        self._add(record)
        return record, key

    def list(self) -> list[KeyRecord]:
        return list(self._read())

    def revoke(self, key_id: str) -> bool:
        """Revoke a live key; False when there is no live key of that id."""
        return self._revoke(key_id)

    def active_ids(self) -> frozenset[str]:
        """The ids of the keys not revoked; cheap to ask often (the file is re-read only when it changed)."""
        return frozenset(r.id for r in self._current() if r.revoked_at is None)

    def revoked_ids(self) -> frozenset[str]:
        """The ids of the revoked keys: what revocation is computed from, so a key made and revoked
        between two looks is still seen revoked (a diff of active sets would never have seen it)."""
        return frozenset(r.id for r in self._current() if r.revoked_at is not None)

    def find(self, key: str) -> KeyRecord | None:
        """The record matching ``key``, live or revoked, compared in constant time."""
        digest = _digest(key)
        found = None
        for record in self._current():
            # Compare against every record: no early exit to time.
            if hmac.compare_digest(record.sha256, digest):
                found = record
        return found

    def verify(self, key: str | None, scope: str) -> KeyRecord | None:
        """The live key with ``scope`` matching ``key``, compared in constant time."""
        if not key:
            return None
        found = self.find(key)
        if found is None or found.revoked_at is not None or scope not in found.scopes:
            return None
        return found

    def lookup(self, key: str | None) -> Deferred[None] | None:
        """A look for ``key`` beyond the copy in memory, to wait for before judging it (None: none needed).

        The key file is re-read whenever it changes, so a fresh key is always
        seen here; the PostgreSQL store's copy lags, and asks the database.
        """
        return None

    def refusal(self, key: str) -> str:
        """Why ``key`` is refused: revoked keys say so, the same words as their closed sockets."""
        found = self.find(key)
        return REVOKED if found is not None and found.revoked_at is not None else "Invalid API key"


def key_from_request(query: Mapping[str, list[str]], headers: Mapping[str, str]) -> str | None:
    """The key from ``?api_key=``, ``Authorization: Bearer`` or ``X-API-Key``, in that order."""
    values = query.get("api_key") or []
    if values and values[0]:
        return values[0]
    authorization = headers.get("authorization", "")
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return headers.get("x-api-key", "").strip() or None


def resolve_username(raw: str | None) -> tuple[str | None, str | None]:
    """A usable username, or the reason it is not one."""
    username = (raw or "").strip()
    if not username:
        return None, "Missing username"
    if len(username) > MAX_USERNAME or "!" in username or any(
        unicodedata.category(c).startswith("C") for c in username
    ):
        return None, "Invalid username"
    return username, None
