"""A resource made when it is first requested, so what it imports stays out of an idle server."""

from __future__ import annotations

import functools
from typing import Any, Callable

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request


class OnFirstRequest(Resource):
    """Stands for the resource ``make`` returns, made when first asked for.

    ``leaf`` must say whether that resource is a leaf (it answers every path
    below its own), as the site walks the tree before anything is made.
    """

    def __init__(self, make: Callable[[], IResource], leaf: bool = False) -> None:
        super().__init__()
        self._make = make
        self.isLeaf = leaf

    @functools.cached_property
    def resource(self) -> IResource:
        return self._make()

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        child: IResource = self.resource.getChildWithDefault(path, request)
        return child

    def render(self, request: Request) -> Any:
        return self.resource.render(request)
