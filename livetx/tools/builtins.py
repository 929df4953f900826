"""The tools that come with livetx: ``clock`` and ``calculator``.

Both answer at once and touch nothing outside the process; a voice user's
"what time is it" and "what is 17 times 23" are the two questions a model
gets wrong most confidently on its own.
"""

from __future__ import annotations

import ast
import math
import operator
from datetime import datetime
from typing import Any, Callable
from zoneinfo import ZoneInfo

from twisted.internet.interfaces import IReactorTime

from livetx.tools import Tool

#: Longest expression the calculator reads; a spoken sum is far shorter.
MAX_EXPRESSION = 200
#: Largest exponent and result magnitude: enough for any arithmetic a user
#: asks aloud, small enough that no call can eat the CPU or the memory.
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e100


def clock_tool(clock: IReactorTime, timezone: str) -> Tool:
    """The current date and time in the configured zone."""
    zone = ZoneInfo(timezone)

    def now() -> dict[str, Any]:
        moment = datetime.fromtimestamp(clock.seconds(), zone)
        return {
            "iso": moment.isoformat(timespec="seconds"),
            "date": moment.date().isoformat(),
            "time": moment.strftime("%H:%M"),
            "weekday": moment.strftime("%A"),
            "timezone": timezone,
        }

    return Tool(
        name="clock",
        description=f"The current date, time and weekday ({timezone}).",
        parameters={"type": "object", "properties": {}, "additionalProperties": False},
        call=now,
    )


class CalculationError(ValueError):
    """An expression the calculator refuses; the text goes back to the model."""


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculate(expression: str) -> int | float:
    """Evaluate arithmetic on numbers by walking its syntax tree: no names, calls or ``eval``."""
    if len(expression) > MAX_EXPRESSION:
        raise CalculationError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise CalculationError("not an arithmetic expression") from None
    return _value(tree.body)


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))  # type: ignore[no-any-return]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculationError(f"exponent larger than {MAX_EXPONENT}")
        try:
            return _bounded(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculationError("division by zero") from None
        except OverflowError:
            raise CalculationError("result too large") from None
    raise CalculationError("only numbers and + - * / // % ** and brackets are allowed")


def _bounded(value: Any) -> int | float:
    if isinstance(value, complex):
        raise CalculationError("the result is not a real number")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise CalculationError("not a number")
    if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise CalculationError("result too large")
    return value


def calculator_tool() -> Tool:
    def run(expression: str) -> int | float:
        return calculate(expression)

    return Tool(
        name="calculator",
        description="Exact arithmetic: + - * / // % ** and brackets on numbers, e.g. '(17 * 23) / 4'.",
        parameters={
            "type": "object",
            "properties": {"expression": {"type": "string", "maxLength": MAX_EXPRESSION}},
            "required": ["expression"],
            "additionalProperties": False,
        },
        call=run,
    )
