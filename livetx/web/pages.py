"""The browser page: ``GET /`` (also ``/live``) and its files under ``/static/``.

Plain files from the package, no build step; ``twisted.web.static.File``
handles caching headers and ranges. Directory listings are off. The file
resources are made on the first page request: ``twisted.web.static`` reads
the system's MIME table when imported, memory an idle server (or one that
only serves sockets) would otherwise hold.
"""

from __future__ import annotations

import functools
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, fail, succeed
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource

from livetx.web.lazy import OnFirstRequest

if TYPE_CHECKING:
    from twisted.web.static import File

STATIC = Path(str(resources.files("livetx.web") / "static"))


@functools.cache
def _files() -> type[File]:
    """``File`` for package files only: a directory answers 404, not a listing."""
    with warnings.catch_warnings():
        # Its module-level 404 pages use a deprecated class; ours are replaced below.
        warnings.simplefilter("ignore", DeprecationWarning)
        from twisted.web.static import File

    class Files(File):
        childNotFound = notFound()  # type: ignore[assignment]  # any resource serves; Twisted names one class

        def directoryListing(self) -> IResource:
            return notFound()

    return Files


def _index() -> IResource:
    return _files()(str(STATIC / "index.html"), defaultType="text/html; charset=utf-8")


def _static() -> IResource:
    files = _files()(str(STATIC))
    files.contentTypes = {**files.contentTypes, ".js": "text/javascript; charset=utf-8"}
    return files


class PageGone(Exception):
    """The page's files left while the server ran."""


def page_ready() -> Deferred[None]:
    """``/readyz``'s ``page`` check: the page's files are still where the server found them.

    Reinstalling or removing the package under a running server takes them
    away (``GET /`` then answers 404) and leaves other code on disk than the
    code running, which the next lazy import would mix in: the server needs a
    restart, so it is not ready."""
    if not (STATIC / "index.html").is_file():
        return fail(PageGone(f"the page's files are gone from {STATIC} (the package was reinstalled or "
                             "removed): restart the server"))
    return succeed(None)


def page_routes() -> dict[str, Resource]:
    """The page's routes, for ``build_site``'s ``routes``."""
    index = OnFirstRequest(_index)
    return {"/": index, "/live": index, "/static": OnFirstRequest(_static)}
