"""Functions the Python-tool tests load by spec (``tests.agents.pytools:...``).

The annotations are strings here (``from __future__ import annotations``), as
in most modules users write: the loader must resolve them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import msgspec

from agents.tools import ToolError, tool


class Point(msgspec.Struct):
    """A point on the plane."""

    x: int
    y: int


def describe(
    name: str,
    counts: list[int],
    origin: Point,
    scale: float = 1.0,
    label: str | None = None,
    tags: Annotated[list[str], msgspec.Meta(description="Free tags.")] = [],  # noqa: B006
) -> dict[str, Any]:
    """Describe a named series of counts.

    More words that are not the description.

    Args:
        name: The series' name.
        counts: How many of each,
            one per day.
        scale: A factor applied to every count.
        tags: Not used: the annotation's description wins.
    """
    return {
        "name": name,
        "total": sum(counts) * scale,
        "origin": origin,
        "label": label,
        "tags": tags,
    }


async def add(a: int, b: int = 2) -> int:
    """Add two numbers."""
    await asyncio.sleep(0)
    return a + b


@tool(effect="read", name="python.reads", description="Read only.")
def read_only(key: str) -> str:
    return key.upper()


def fail(message: str) -> None:
    """Raise an error."""
    raise ValueError(message)


def fail_for_model(message: str) -> None:
    """Raise a ToolError of its own."""
    raise ToolError(f"sorry: {message}")


def unserialisable() -> object:
    """Return something no JSON can hold."""
    return object()


@dataclasses.dataclass
class Row:
    id: int
    when: str


def rows(limit: int = 2) -> list[Row]:
    """Dataclasses come back as objects."""
    return [Row(i, f"day {i}") for i in range(limit)]


def defaults(items: list[int] = [1, 2], flag: bool = False, /) -> list[int]:  # noqa: B006
    """A non-empty list default, and positional-only parameters."""
    items.append(3)
    return items if not flag else []


def _undo_ledger(arguments: dict[str, Any], result: Any) -> dict[str, Any]:
    path = Path(arguments["path"])
    path.write_text(json.dumps({"undone": result["entry"]}))
    return {"undid": result["entry"]}


@tool(effect="reversible", compensate=_undo_ledger)
def record(path: str, entry: str) -> dict[str, Any]:
    """Write an entry to a ledger file."""
    Path(path).write_text(json.dumps({"entry": entry}))
    return {"entry": entry}


TOOLS = [add, read_only]
NOT_CALLABLE = 42
MIXED = [add, "not a function"]


def untyped(a, b: int) -> int:
    """One parameter has no annotation."""
    return int(a) + b


def star_args(*values: int) -> int:
    """Takes *values."""
    return sum(values)


def star_kwargs(**options: str) -> int:
    """Takes **options."""
    return len(options)


class Opaque:
    pass


def opaque(thing: Opaque) -> None:
    """A parameter whose type has no JSON Schema."""


def unresolved(thing: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
    """An annotation that names nothing."""
