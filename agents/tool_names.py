"""Blackboard tool names to the names a provider accepts, and back.

Blackboard namespaces tools with dots (``workspace.write``,
``orders.list_endpoints``); Anthropic and OpenAI accept only
``^[a-zA-Z0-9_-]{1,64}$``. :class:`WireNames` maps the names of one request
both ways: a dot becomes ``__``, any other character outside the set becomes
``_``, the result is clipped to 64 characters, and a name whose wire form is
already taken gets a suffix from its hash.

The mapping depends only on the set of names, never on their order, so every
turn of a conversation that offers the same tools shows the model the same
wire names. The tools the request offers are named before the names that
only occur in its history, so a stray name from an old turn never renames an
offered tool.

Pure: no SDK imports, no clock, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

    from agents.models import ModelRequest

__all__ = ["MAX_WIRE_NAME", "WireNames", "is_wire_name", "wire_name"]

MAX_WIRE_NAME: Final = 64
"""The longest tool name either API accepts."""

_VALID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_INVALID_CHAR = re.compile(r"[^a-zA-Z0-9_-]")
_SUFFIX_HEX = 8


def is_wire_name(name: str) -> bool:
    """Return whether a provider accepts ``name`` as it is."""
    return _VALID.fullmatch(name) is not None


def wire_name(name: str) -> str:
    """Return one name's wire form on its own, before any collision is resolved.

    ``.`` becomes ``__`` (the namespace stays readable to the model), any other
    character outside ``[a-zA-Z0-9_-]`` becomes ``_``, and the result is
    clipped to :data:`MAX_WIRE_NAME` characters. An empty name becomes ``_``.
    """
    sanitized = _INVALID_CHAR.sub(lambda m: "__" if m.group(0) == "." else "_", name)
    return sanitized[:MAX_WIRE_NAME] or "_"


def _suffixed(name: str, attempt: int) -> str:
    """A wire name for ``name`` that ends in a hash of it (and of ``attempt``)."""
    seed = name if attempt == 0 else f"{name}\x00{attempt}"
    digest = hashlib.sha256(seed.encode()).hexdigest()[:_SUFFIX_HEX]
    return f"{wire_name(name)[: MAX_WIRE_NAME - _SUFFIX_HEX - 1]}_{digest}"


class WireNames:
    """The two-way tool-name mapping of one request.

    Args:
        offered: The names of the tools the request offers; they are named
            first, so their wire names never depend on the history.
        also: Other names the request carries (tool calls of earlier turns
            whose tool is no longer offered, or that the model invented).
    """

    def __init__(self, offered: Iterable[str], also: Iterable[str] = ()) -> None:
        self._to_wire: dict[str, str] = {}
        self._from_wire: dict[str, str] = {}
        first = set(offered)
        for tier in (first, set(also) - first):
            # Sorted, and names that are valid as they are first: a tool
            # already called ``a__b`` keeps its name even when ``a.b`` exists.
            for name in sorted(tier, key=lambda n: (not is_wire_name(n), n)):
                self._claim(name)

    @classmethod
    def for_request(cls, request: ModelRequest) -> WireNames:
        """The mapping of a request: its tools, then its history's tool calls."""
        return cls(
            (tool.name for tool in request.tools),
            (call.name for m in request.messages for call in m.tool_calls),
        )

    def _claim(self, name: str) -> None:
        wire = wire_name(name)
        attempt = 0
        while wire in self._from_wire:
            wire = _suffixed(name, attempt)
            attempt += 1
        self._to_wire[name] = wire
        self._from_wire[wire] = name

    def wire(self, name: str) -> str:
        """The name to send for Blackboard tool ``name``.

        A name the request does not carry gets its plain :func:`wire_name`.
        """
        return self._to_wire.get(name) or wire_name(name)

    def name(self, wire: str) -> str:
        """The Blackboard name of a tool the model called by its wire name.

        A name that is no wire name of this request (the model invented it)
        is returned as the model sent it.
        """
        return self._from_wire.get(wire, wire)

    def items(self) -> dict[str, str]:
        """Every Blackboard name of the request and its wire name."""
        return dict(self._to_wire)
