"""Where conversations, keys and the JWT secret live, decided once from ``[store] url``.

The server (``twistd live``) and the ``livetx`` command both ask here, so
``livetx keys`` and ``livetx token`` with ``--config`` act on the same
keys and secret as a server started with that file. Without a URL it is
the data dir: SQLite, the key file and the secret file, as always, and
psycopg is never imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import IService
from twisted.internet.defer import Deferred

from livetx.auth.keys import KeyStore
from livetx.auth.tokens import SECRET_FILE, load_or_create_secret
from livetx.config import Config, ConfigError
from livetx.store.sql import SQLStore


@dataclass
class Storage:
    """What a server keeps, and what must run beside it for that."""

    store: SQLStore
    keys: KeyStore
    secret: str
    #: Services to start with the server (PostgreSQL: refreshing the keys).
    services: list[IService] = field(default_factory=list)
    #: Readiness probes for ``/readyz``, by name.
    probes: dict[str, Callable[[], Deferred[None]]] = field(default_factory=dict)
    #: PostgreSQL's pool (``livetx.store.postgres.Database``), for what else keeps its state there.
    database: Any = None


def check(settings: Config) -> None:
    """At start-up: reach and migrate the configured database, or say why not in one line."""
    if settings.store.url:
        from livetx.errors import StoreUnavailable
        from livetx.store.postgres import prepare

        try:
            prepare(settings.store.url)
        except StoreUnavailable as e:
            raise ConfigError(f"[store] {e}") from None


def open_storage(settings: Config, data_dir: Path, reactor: Any) -> Storage:
    """The server's store, keys and secret (after :func:`check`)."""
    url = settings.store.url
    if not url:
        from livetx.store.sqlite import SQLiteStore

        return Storage(SQLiteStore(data_dir), KeyStore(data_dir), load_or_create_secret(data_dir, settings.auth.jwt_secret))
    from twisted.application.internet import TimerService

    from livetx.auth.pg_keys import REFRESH_SECONDS, PostgresKeyStore, shared_secret
    from livetx.store.postgres import Database, PostgresStore

    database = Database(url, reactor)
    keys = PostgresKeyStore(url, database)
    keys.load()
    refresh: IService = TimerService(REFRESH_SECONDS, keys.refresh)
    refresh.clock = reactor  # type: ignore[attr-defined]
    return Storage(
        PostgresStore(database), keys, settings.auth.jwt_secret or shared_secret(url),
        services=[refresh], probes={"store": database.ping}, database=database,
    )


def key_store(settings: Config, data_dir: Path) -> KeyStore:
    """The keys, for the ``livetx`` command."""
    if not settings.store.url:
        return KeyStore(data_dir)
    from livetx.auth.pg_keys import PostgresKeyStore

    check(settings)
    return PostgresKeyStore(settings.store.url)


def secret_to_create(settings: Config, data_dir: Path) -> Path | None:
    """The secret file that opening this storage would create, or None (configured, in PostgreSQL, or there)."""
    path = data_dir / SECRET_FILE
    return None if settings.auth.jwt_secret or settings.store.url or path.exists() else path


def jwt_secret(settings: Config, data_dir: Path) -> str:
    """The secret tokens are signed with, for the ``livetx`` command."""
    if settings.auth.jwt_secret or not settings.store.url:
        return load_or_create_secret(data_dir, settings.auth.jwt_secret)
    from livetx.auth.pg_keys import shared_secret

    check(settings)
    return shared_secret(settings.store.url)
