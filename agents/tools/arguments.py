"""A tool's arguments as a msgspec Struct: its JSON Schema, and the check.

The workspace tools and the user's Python functions both describe their
arguments with a Struct, so one type gives the schema a model is offered
(:func:`arguments_schema`) and the conversion of what the model sent
(:func:`parse_arguments`); the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import msgspec

from agents.tools.registry import ToolRefused

__all__ = ["arguments_schema", "inline_refs", "parse_arguments"]

T = TypeVar("T")

_DEFS: Final = "#/$defs/"
_RAW: Final = "_raw"
"""The key :func:`agents.models.tool_arguments` keeps undecodable arguments
under."""


def arguments_schema(struct: type[Any]) -> dict[str, Any]:
    """The JSON Schema of a Struct of arguments, with its definitions inlined.

    Models read a flat object schema best, and some providers accept no
    ``$ref``; only a type that contains itself keeps a ``$defs`` entry (it
    cannot be inlined). The top-level ``title`` and ``description`` (the
    Struct's Python name and docstring) are dropped: the tool's own name and
    description say what it is.
    """
    schema = inline_refs(msgspec.json.schema(struct))
    schema.pop("title", None)
    schema.pop("description", None)
    return schema


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every ``$ref`` into its ``$defs`` replaced by the target.

    A reference met again inside its own expansion (a recursive type) is
    left as it is, and its definition kept under ``$defs``.
    """
    defs: dict[str, Any] = schema.get("$defs", {})
    kept: dict[str, Any] = {}

    def expand(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [expand(item, stack) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_DEFS):
            name = ref.removeprefix(_DEFS)
            if name in stack:
                kept[name] = defs[name]
                return dict(node)
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            target = expand(defs[name], (*stack, name))
            return {**target, **expand(siblings, stack)}
        return {k: expand(v, stack) for k, v in node.items() if k != "$defs"}

    out: dict[str, Any] = expand(schema, ())
    done: dict[str, Any] = {}
    # Expanding a kept definition may meet another recursive type: go on
    # until nothing new is kept.
    while pending := sorted(set(kept) - set(done)):
        for name in pending:
            done[name] = expand(defs[name], (name,))
    if done:
        out["$defs"] = dict(sorted(done.items()))
    return out


def parse_arguments(tool: str, arguments: Any, struct: type[T]) -> T:
    """Convert a call's arguments to ``struct``, or refuse the call.

    Raises:
        ToolRefused: The arguments do not fit the schema; the message is
            msgspec's (``Expected `int`, got `str` - at `$.max_bytes```), for
            the model to correct itself.
    """
    if isinstance(arguments, dict) and set(arguments) == {_RAW}:
        # What the provider sent did not decode to an object: say so rather
        # than complain about an unknown field the model never wrote.
        text = str(arguments[_RAW])
        clipped = text if len(text) <= 200 else text[:200] + "..."
        raise ToolRefused(
            f"invalid arguments for {tool}: not a JSON object: {clipped!r}"
        )
    try:
        return msgspec.convert(arguments, struct)
    except msgspec.ValidationError as e:
        raise ToolRefused(f"invalid arguments for {tool}: {e}") from e
