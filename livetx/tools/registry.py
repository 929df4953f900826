"""The enabled tools: built-ins and installed packages, checked once at start-up.

Only the names in ``[tools] enabled`` are loaded, so an installed package
the operator did not enable never runs, and a name that matches nothing
stops start-up with one line. Each tool's argument schema is compiled once
with ``jsonschema``; the model's arguments are checked against it before
the tool sees them.
"""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from typing import Any, Callable, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
from twisted.internet.interfaces import IReactorTime

from livetx.config import ConfigError, ToolsConfig
from livetx.tools import Tool
from livetx.tools.builtins import calculator_tool, clock_tool

#: Third-party tools are entry points in this group (docs/tools.md).
ENTRY_POINT_GROUP = "livetx.tools"
#: What OpenAI-compatible services accept as a function name.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

BUILTINS: dict[str, Callable[[ToolsConfig, IReactorTime], Tool]] = {
    "clock": lambda config, clock: clock_tool(clock, config.timezone),
    "calculator": lambda config, clock: calculator_tool(),
}


class ToolRegistry:
    """The enabled tools by name, with their compiled argument schemas.

    MCP servers (:mod:`livetx.tools.mcp_servers`) change their part of it
    through :meth:`offer` while the server runs; a turn reads the tools
    offered when it asks the model.
    """

    def __init__(self, tools: Sequence[Tool]) -> None:
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}
        #: Which MCP server offered each of its tools ("" for the enabled ones).
        self._owners: dict[str, str] = {}
        #: The ``tools`` field of a chat-completions request, rebuilt when the tools change.
        self.spec: list[dict[str, Any]] = []
        self.offer("", tools)

    def offer(self, owner: str, tools: Sequence[Tool]) -> list[str]:
        """Offer ``tools`` in place of what ``owner`` offered before; say why of each name already taken."""
        taken = []
        for name in [n for n, o in self._owners.items() if o == owner]:
            del self._tools[name], self._validators[name], self._owners[name]
        for tool in tools:
            if tool.name in self._tools:
                taken.append(f"tool {tool.name!r} is refused: the name is taken")
                continue
            self._tools[tool.name], self._owners[tool.name] = tool, owner
            self._validators[tool.name] = jsonschema.validators.validator_for(
                tool.parameters, jsonschema.Draft202012Validator)(tool.parameters)
        self.spec = [
            {"type": "function",
             "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in self._tools.values()
        ]
        return taken

    def __bool__(self) -> bool:
        return bool(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def invalid(self, name: str, arguments: Any) -> str | None:
        """Why ``arguments`` do not fit the tool's schema (one short line), or None."""
        error = jsonschema.exceptions.best_match(self._validators[name].iter_errors(arguments))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"invalid arguments{' at ' + where if where else ''}: {error.message}"[:300]


def load_tools(config: ToolsConfig, clock: IReactorTime) -> ToolRegistry:
    """The tools ``config`` enables, or ``ConfigError`` naming the first problem."""
    try:
        ZoneInfo(config.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"[tools] timezone {config.timezone!r} is not a known time zone") from None
    if config.max_rounds < 1:
        raise ConfigError("[tools] max_rounds must be at least 1")
    installed = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    tools: list[Tool] = []
    for name in dict.fromkeys(config.enabled):
        if name in BUILTINS:
            tool = BUILTINS[name](config, clock)
        elif name in installed:
            tool = _installed(name, installed[name])
        else:
            known = sorted({*BUILTINS, *installed})
            raise ConfigError(f"[tools] unknown tool {name!r}; available: {', '.join(known)}")
        tools.append(tool)
    return ToolRegistry(tools)


def _installed(name: str, entry_point: Any) -> Tool:
    """Load one entry point: a :class:`Tool`, or a function of no arguments returning one."""
    where = f"[tools] tool {name!r} ({entry_point.value})"
    try:
        loaded = entry_point.load()
        tool = loaded if isinstance(loaded, Tool) else loaded()
    except Exception as e:
        raise ConfigError(f"{where} cannot be loaded: {type(e).__name__}: {e}") from None
    if not isinstance(tool, Tool):
        raise ConfigError(f"{where} is not a livetx.tools.Tool")
    if tool.name != name or not _NAME.match(name):
        raise ConfigError(f"{where} must be named {name!r} (letters, digits, _ and -)")
    if not callable(tool.call) or not isinstance(tool.description, str):
        raise ConfigError(f"{where} needs a description and a callable")
    if not isinstance(tool.parameters, dict) or tool.parameters.get("type") != "object":
        raise ConfigError(f"{where} parameters must be a JSON Schema of type object")
    try:
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
    except jsonschema.exceptions.SchemaError as e:
        raise ConfigError(f"{where} has an invalid schema: {e.message}") from None
    return tool
