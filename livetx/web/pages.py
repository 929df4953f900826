"""The browser page: ``GET /`` (also ``/live``) and its files under ``/static/``.

Plain files from the package, no build step; ``twisted.web.static.File``
handles caching headers and ranges. Directory listings are off.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

from twisted.web.pages import notFound
from twisted.web.resource import Resource

with warnings.catch_warnings():
    # Its module-level 404 pages use a deprecated class; ours are replaced below.
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web.static import File

STATIC = Path(str(resources.files("livetx.web") / "static"))


class _Files(File):
    """Package files only: a directory answers 404, not a listing."""

    childNotFound = notFound()

    def directoryListing(self) -> Resource:
        return notFound()


def page_routes() -> dict[str, Resource]:
    """The page's routes, for ``build_site``'s ``routes``."""
    index = _Files(str(STATIC / "index.html"), defaultType="text/html; charset=utf-8")
    files = _Files(str(STATIC))
    files.contentTypes = {**files.contentTypes, ".js": "text/javascript; charset=utf-8"}
    return {"/": index, "/live": index, "/static": files}
