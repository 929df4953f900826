"""``twistd live``: command-line options and the service tree.

Shaped like ``twisted.web.tap``: a repeatable ``--listen`` taking endpoint
strings, validation in ``opt_*`` and ``postOptions``, and a ``makeService``
that builds a ``MultiService`` and takes the reactor as a parameter.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from twisted.application import strports
from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from livetx import __version__, config as configuration
from livetx.providers.factory import check as check_engines
from livetx.service import build_services

_log = Logger()

DEFAULT_LISTEN = "tcp:6185"


class Options(usage.Options):
    """Options for ``twistd live``."""

    synopsis = "[--listen ENDPOINT]... [--data-dir DIR] [--config FILE]"
    longdesc = (
        "Serve the AstrBot Live API (WebSocket voice and text conversations). "
        "With no config file, replies come from the offline echo model."
    )
    optParameters = [
        ["data-dir", "d", configuration.DEFAULT_DATA_DIR, "Directory for keys, secrets and data (created if missing)."],
        ["config", "c", None, "TOML configuration file (see docs/configuration.md)."],
    ]
    optFlags = [
        ["conformance-echo", None, "Test only: also serve an echo socket at /conformance/echo."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted endpoint, e.g. tcp:6185 or ssl:8443:privateKey=key.pem (repeatable)."""
        from twisted.internet import reactor  # twistd has installed its reactor by now

        try:
            # Parsing builds the endpoint, so a missing ssl: key file fails here.
            endpoints.serverFromString(reactor, description)
        except Exception as e:
            raise usage.UsageError(f"bad --listen endpoint {description!r}: {e}") from None
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_version(self) -> None:
        """Print the livetx version and exit."""
        print(f"livetx {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        data_dir = Path(self["data-dir"]).expanduser().resolve()
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise usage.UsageError(f"cannot create --data-dir {str(data_dir)!r}: {e.strerror}") from None
        self["data-dir"] = data_dir
        try:
            self["settings"] = configuration.load(
                Path(self["config"]) if self["config"] else None
            )
            check_engines(self["settings"])
        except configuration.ConfigError as e:
            # One line naming the problem, not a page of usage text.
            sys.stderr.write(f"livetx: {e}\n")
            raise SystemExit(1)


def makeService(options: Options, reactor: Any = None) -> IService:
    """The service graph (:func:`livetx.service.build_services`) and its listening ports."""
    if reactor is None:
        from twisted.internet import reactor
    settings: configuration.Config = options["settings"]
    data_dir: Path = options["data-dir"]
    services = build_services(settings, reactor, data_dir, echo=bool(options["conformance-echo"]))
    # Added last, so stopped first: no new connection while the others drain.
    for description in options["listen"]:
        strports.service(description, services.site, reactor=reactor).setServiceParent(services.root)
    _log.info(
        "livetx {version}: model {llm}, speech {tts}, transcription {stt}, data in {data_dir}",
        version=__version__,
        llm=settings.llm.provider,
        tts=settings.tts.provider,
        stt=settings.stt.provider,
        data_dir=str(data_dir),
    )
    return services.root
