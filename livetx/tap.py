"""``twistd live``: command-line options and the service tree.

Shaped like ``twisted.web.tap``: a repeatable ``--listen`` taking endpoint
strings, validation in ``opt_*`` and ``postOptions``, and a ``makeService``
that builds a ``MultiService`` and takes the reactor as a parameter.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LoggingFile
from twisted.python import usage

from livetx import __version__, config as configuration
from livetx.auth.login_links import LINK_SECONDS, LoginLinks, link_url, page_address
from livetx.engines import check as check_engines
from livetx.fences.twisted_app import RaisingEndpointService
from livetx.service import build_services
from livetx.storage import check as check_store

_log = Logger()

DEFAULT_LISTEN = "tcp:6185"
#: Accepted but left out of ``--help``: what ``--workers`` passes its workers, and the conformance tests' socket.
HIDDEN = frozenset({"adopt", "metrics-dir", "worker", "conformance-echo"})


class Options(usage.Options):
    """Options for ``twistd live``."""

    synopsis = "[--listen ENDPOINT]... [--data-dir DIR] [--config FILE] [--workers N]"
    longdesc = (
        "Serve the AstrBot Live API (WebSocket voice and text conversations). "
        "With no config file, replies come from the offline echo model."
    )
    optParameters = [
        ["data-dir", "d", None,
         f"Directory for keys, secrets and data, created if missing ({configuration.DATA_DIR_HELP})."],
        ["config", "c", None, "TOML configuration file (see docs/configuration.md)."],
        ["workers", "w", 1, "Worker processes sharing the --listen sockets (more than 1 needs [cluster] redis).", int],
        ["metrics-dir", None, None, "Internal (--workers): where the workers share their metrics."],
        ["worker", None, 0, "Internal (--workers): this worker's number, named in its log lines.", int],
    ]
    optFlags = [
        ["conformance-echo", None,
         "FOR TESTS ONLY, never in production: also serve an unauthenticated echo socket at "
         "/conformance/echo for the Autobahn conformance suite."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["adopt"] = []

    def opt_adopt(self, spec: str) -> None:
        """Internal (--workers): serve an inherited listening socket, FD:FAMILY."""
        self["adopt"].append(spec)

    def getUsage(self, width: int | None = None) -> str:
        """The help text, without the :data:`HIDDEN` options."""
        from livetx.fences.twisted_usage import usage_without

        return usage_without(self, HIDDEN, width)

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted endpoint, e.g. ssl:8443:privateKey=key.pem (repeatable; default: tcp:6185)."""
        from twisted.internet import reactor  # twistd has installed its reactor by now

        try:
            # Parsing builds the endpoint, so a missing ssl: key file fails here.
            endpoints.serverFromString(reactor, description)
        except Exception as e:
            stop_startup(f"bad --listen endpoint {description!r}: {e}")
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_version(self) -> None:
        """Print the livetx version and exit."""
        print(f"livetx {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        data_dir = configuration.data_dir(self["data-dir"])
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            stop_startup(f"cannot create the data dir {str(data_dir)!r}: {e.strerror}")
        self["data-dir"] = data_dir
        try:
            self["settings"] = configuration.load(
                Path(self["config"]) if self["config"] else None
            )
            check_engines(self["settings"])
            self._check_workers()
            check_store(self["settings"])
        except configuration.ConfigError as e:
            stop_startup(str(e))

    def _check_workers(self) -> None:
        workers = self["workers"]
        if workers < 1:
            raise configuration.ConfigError("--workers must be 1 or more")
        if workers > 1 and not self["settings"].cluster.redis:
            raise configuration.ConfigError(
                f"--workers {workers} needs [cluster] redis in the config file: the workers share limits, "
                "bound sessions and resume through it")
        if workers > 1:
            from livetx.cluster.workers import unshareable

            for description in self["listen"]:
                if unshareable(description):
                    raise configuration.ConfigError(
                        f"--workers cannot share --listen {description!r}: use tcp: or unix: "
                        "(terminate TLS at the proxy in front)")


def stop_startup(message: str) -> NoReturn:
    """End start-up with one line on stderr and exit status 1, not a traceback or the usage text.

    By the time ports are opened twistd has sent ``sys.stderr`` into its log,
    so the line goes to the process's own stderr and to the log (which is all a
    daemon has).
    """
    stream = sys.stderr
    if isinstance(stream, LoggingFile):
        _log.error("livetx: {message}", message=message)
        stream = sys.__stderr__
    if stream is not None:
        stream.write(f"livetx: {message}\n")
        stream.flush()
    raise SystemExit(1)


class _Listening(RaisingEndpointService):
    """One ``--listen`` endpoint; failing to open it (port taken, out of range, no permission) is one line."""

    def __init__(self, description: str, factory: Any, reactor: Any) -> None:
        super().__init__(endpoints.serverFromString(reactor, description), factory)
        self.description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            reason = e.socketError if isinstance(e, CannotListenError) else e
            stop_startup(f"cannot listen on {self.description}: {reason}")


def makeService(options: Options, reactor: Any = None) -> IService:
    """The service graph (:func:`livetx.service.build_services`) and its listening ports."""
    if reactor is None:
        from twisted.internet import reactor
    settings: configuration.Config = options["settings"]
    data_dir: Path = options["data-dir"]
    if options["workers"] > 1:  # this process only supervises; the workers serve
        return _supervisor(options, settings, data_dir, reactor)
    try:
        services = build_services(settings, reactor, data_dir, echo=bool(options["conformance-echo"]))
    except OSError as e:  # the data dir's secret or key files cannot be read or written
        stop_startup(f"cannot use the data dir {str(data_dir)!r}: {e.filename or ''}: {e.strerror or e}")
    except configuration.ConfigError as e:  # known only once started: an MCP server's tool names
        stop_startup(str(e))
    # Added last, so stopped first: no new connection while the others drain.
    if options["adopt"]:  # a worker of --workers: the supervisor holds the sockets
        from livetx.cluster.worker_metrics import SharedMetrics
        from livetx.cluster.workers import AdoptedPort, as_worker

        as_worker(reactor, options["worker"])
        SharedMetrics(services.metrics, Path(options["metrics-dir"]), reactor).setServiceParent(services.root)
        for spec in options["adopt"]:
            AdoptedPort(reactor, spec, services.site).setServiceParent(services.root)
    for description in [] if options["adopt"] else options["listen"]:
        _Listening(description, services.site, reactor).setServiceParent(services.root)
    _log.info(
        "livetx {version}: model {llm}, speech {tts}, transcription {stt}, data in {data_dir}",
        version=__version__,
        llm=settings.llm.provider,
        tts=settings.tts.provider,
        stt=settings.stt.provider,
        data_dir=str(data_dir),
    )
    for warning in configuration.unkeyed(settings):
        _log.warn("{warning}", warning=warning)
    if not options["adopt"]:
        _announce_login(options["listen"], services.login)
    return services.root


def _announce_login(listen: list[str], links: LoginLinks) -> None:
    """Jupyter's way in: a one-time link that signs the browser page in, printed once at start-up."""
    page = next(filter(None, map(page_address, listen)), None)
    if page is not None:
        _log.info("sign the browser page in, once, within {minutes:.0f} minutes: {link} "
                  "(livetx open prints another)", minutes=LINK_SECONDS / 60, link=link_url(page, links.issue()))


def _supervisor(options: Options, settings: configuration.Config, data_dir: Path, reactor: Any) -> IService:
    """``--workers N``: hold the sockets, run N workers (:mod:`livetx.cluster.workers`)."""
    from livetx.cluster.workers import Supervisor, WorkerLogs
    from livetx.storage import jwt_secret

    jwt_secret(settings, data_dir)  # made once here, or each worker would race to make its own
    args = ["--data-dir", str(data_dir), *(["--config", options["config"]] if options["config"] else [])]
    args += ["--conformance-echo"] if options["conformance-echo"] else []
    logs = WorkerLogs.like(getattr(options, "parent", None))  # twistd's own options, when run by twistd
    return Supervisor(reactor, options["listen"], options["workers"], args, logs=logs)
