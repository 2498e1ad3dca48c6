"""The user's Python functions as tools, their schema from their signature.

``[tools] python = ["mypkg.tools:TOOLS"]`` names a function, or a list of
functions, as ``module:attribute`` (loaded the way custom task handlers are,
see :func:`blackboard.engine.handlers.load`). Each becomes the tool
``python.<function name>``::

    @tool(effect="read")
    def lookup(order_id: str, fields: list[str] | None = None) -> dict[str, Any]:
        '''Look an order up by its id.'''

Every parameter needs a type annotation: msgspec turns them into the JSON
Schema the model is offered, and converts what the model sends before the
function is called (a call that does not fit is refused with msgspec's
reason). The docstring's first paragraph is the tool's description, and its
``Args:`` section describes the parameters. A sync function runs in a worker
thread, an async one on the loop. Whatever it returns goes through
:func:`msgspec.to_builtins` (Structs, dataclasses, datetimes are fine).

A function that is not decorated with :func:`tool` is ``irreversible``: if a
worker dies during its call, nobody can tell whether it happened, so a human
decides. Mark what only reads ``read``; give a ``reversible`` one its undo.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import inspect
import re
import typing
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec

from agents.tools.arguments import arguments_schema, parse_arguments
from agents.tools.registry import EFFECTS, Effect, Tool, ToolError
from blackboard.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from agents.tools.registry import Invocation

__all__ = ["PREFIX", "python_tool", "python_tools", "tool"]

PREFIX: Final = "python."
"""The name of an undecorated function's tool is ``python.<its name>``."""

_MARK: Final = "__bb_tool__"
"""The attribute :func:`tool` leaves on a function."""

F = TypeVar("F", bound="Callable[..., Any]")


@dataclass(frozen=True, slots=True)
class _Marked:
    """What :func:`tool` says of a function."""

    effect: Effect
    name: str | None
    description: str | None
    compensate: Callable[..., Any] | None
    idempotent: bool = False


def tool(
    effect: Effect = "irreversible",
    *,
    name: str | None = None,
    description: str | None = None,
    compensate: Callable[..., Any] | None = None,
    idempotent: bool = False,
) -> Callable[[F], F]:
    """Say what calling a function does, for the engine and the model.

    Args:
        effect: ``read`` (no side effect: a call cut short is run again),
            ``reversible`` (needs ``compensate``) or ``irreversible`` (a call
            cut short waits for a human).
        name: The tool's name (default ``python.<function name>``).
        description: What the model is told the tool does (default: the
            docstring's first paragraph).
        compensate: Undoes a completed call: called as
            ``compensate(arguments, result)`` with the keyword arguments the
            function got and the result it returned (as recorded, JSON). Sync
            or async.
        idempotent: A second call with the same arguments leaves what one
            call does (a call cut short is then redone without asking).

    Raises:
        ConfigError: An unknown effect, ``reversible`` without
            ``compensate`` or ``compensate`` on another effect.
    """
    if effect not in EFFECTS:
        raise ConfigError(
            f"tool(): effect {effect!r} is not one of {', '.join(EFFECTS)}"
            " (write @tool(effect=...), with the parentheses)"
        )
    if effect == "reversible" and compensate is None:
        raise ConfigError("tool(): a reversible tool needs compensate=")
    if compensate is not None and effect != "reversible":
        raise ConfigError(
            f"tool(): compensate= is for reversible tools, not {effect!r} ones"
        )
    if compensate is not None and not callable(compensate):
        raise ConfigError(f"tool(): compensate={compensate!r} is not callable")
    if name is not None and (not name or name != name.strip() or " " in name):
        raise ConfigError(f"tool(): name {name!r} is empty or has spaces")
    marked = _Marked(effect, name, description, compensate, idempotent)

    def mark(fn: F) -> F:
        setattr(fn, _MARK, marked)
        return fn

    return mark


def python_tools(specs: Iterable[str]) -> list[Tool]:
    """The tools of every ``module:attribute`` in ``specs``, in order.

    Raises:
        ConfigError: A spec that is malformed, a module that does not import,
            a missing attribute, something that is not a function (or a list
            of them), a function whose signature gives no schema.
    """
    return [t for spec in specs for t in _load(spec)]


def _load(spec: str) -> list[Tool]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            f"python tools must be given as module:attribute, not {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"cannot import python tools module {module_name!r}: {e}"
        ) from e
    except Exception as e:
        # Whatever the module's own code raised while importing, it is the
        # configuration that names it that fails.
        raise ConfigError(
            f"importing python tools module {module_name!r} failed:"
            f" {type(e).__name__}: {e}"
        ) from e
    found: Any = getattr(module, attr, _MISSING)
    if found is _MISSING:
        raise ConfigError(f"python tools {spec}: {module_name} has no {attr!r}")
    items = list(found) if isinstance(found, list | tuple) else [found]
    for i, item in enumerate(items):
        if not callable(item) or inspect.isclass(item):
            what = f"item {i} of {spec}" if item is not found else spec
            raise ConfigError(
                f"python tools: {what} is not a function (nor a list of"
                f" functions) but {type(item).__name__} {_short(item)}"
            )
    return [python_tool(fn, source=f"python:{module_name}") for fn in items]


_MISSING: Final = object()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def python_tool(fn: Callable[..., Any], *, source: str | None = None) -> Tool:
    """One function as a tool.

    Args:
        fn: A function whose every parameter is annotated; neither ``*args``
            nor ``**kwargs``.
        source: The tool's source (default ``python:<fn's module>``).

    Raises:
        ConfigError: The signature gives no schema (the message names the
            function and the parameter).
    """
    where = f"python tool {_qualified(fn)}"
    marked: _Marked = getattr(fn, _MARK, None) or _Marked(
        "irreversible", None, None, None
    )
    fn_name = getattr(fn, "__name__", None)
    if marked.name is None and not fn_name:
        raise ConfigError(f"{where}: it has no name; give it @tool(name=...)")
    name = marked.name or f"{PREFIX}{fn_name}"
    try:
        signature = inspect.signature(fn)
        # Resolved, not read: a module with `from __future__ import
        # annotations` has strings here.
        hints = typing.get_type_hints(
            fn if inspect.isroutine(fn) else type(fn).__call__, include_extras=True
        )
    except Exception as e:
        raise ConfigError(
            f"{where}: cannot read its signature: {type(e).__name__}: {e}"
        ) from e
    doc, arg_docs = _docstring(inspect.getdoc(fn))
    struct, positional, factories = _arguments(where, name, signature, hints)
    schema = _schema(where, struct, hints)
    properties: dict[str, Any] = schema.get("properties", {})
    for field_name, default in factories.items():
        properties[field_name].setdefault("default", msgspec.to_builtins(default))
    for field_name, text in arg_docs.items():
        prop = properties.get(field_name)
        if prop is not None and "description" not in prop:
            properties[field_name] = {"description": text, **prop}

    async def run(invocation: Invocation, arguments: dict[str, Any]) -> Any:
        args, kwargs = _values(name, arguments, struct, positional)
        result = await _call(fn, args, kwargs)
        return _builtins(name, result)

    compensate = None
    undo = marked.compensate
    if undo is not None:

        async def compensate(
            invocation: Invocation, arguments: dict[str, Any], result: Any
        ) -> Any:
            args, kwargs = _values(name, arguments, struct, positional)
            given = dict(zip(positional, args, strict=True)) | kwargs
            try:
                out = await _call(undo, [given, result], {})
            except ToolError as e:
                raise ToolError(f"cannot undo {name}: {e}") from e
            return _builtins(name, out)

    return Tool(
        name=name,
        description=marked.description if marked.description is not None else doc,
        input_schema=schema,
        effect=marked.effect,
        source=source or f"python:{getattr(fn, '__module__', '?')}",
        run=run,
        compensate=compensate,
        idempotent=marked.idempotent,
    )


def _qualified(fn: object) -> str:
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', None) or _short(fn)}"


def _arguments(
    where: str,
    name: str,
    signature: inspect.Signature,
    hints: dict[str, Any],
) -> tuple[type[msgspec.Struct], list[str], dict[str, Any]]:
    """The Struct of a function's arguments, and what it takes to call it.

    Also returns the names of the positional-only parameters, and the
    defaults that need a factory (a non-empty list...).
    """
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    positional: list[str] = []
    factories: dict[str, Any] = {}
    for p in signature.parameters.values():
        if p.kind is p.VAR_POSITIONAL or p.kind is p.VAR_KEYWORD:
            stars = "*" if p.kind is p.VAR_POSITIONAL else "**"
            raise ConfigError(
                f"{where}: {stars}{p.name} is not allowed (a tool's arguments are"
                " named, each with its type)"
            )
        if p.name not in hints:
            raise ConfigError(
                f"{where}: parameter {p.name!r} has no type annotation (a tool's"
                " argument schema comes from the annotations)"
            )
        if p.kind is p.POSITIONAL_ONLY:
            positional.append(p.name)
        if p.default is p.empty:
            fields.append((p.name, hints[p.name]))
        elif isinstance(p.default, list | dict | set) and p.default:
            # msgspec will not share a mutable default between instances.
            factories[p.name] = p.default
            fields.append(
                (
                    p.name,
                    hints[p.name],
                    msgspec.field(default_factory=partial(copy.deepcopy, p.default)),
                )
            )
        else:
            fields.append((p.name, hints[p.name], p.default))
    try:
        struct = msgspec.defstruct(
            f"{name}.arguments", fields, kw_only=True, forbid_unknown_fields=True
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
    return struct, positional, factories


def _schema(where: str, struct: type[Any], hints: dict[str, Any]) -> dict[str, Any]:
    try:
        return arguments_schema(struct)
    except (TypeError, ValueError) as e:
        # Name the parameter whose type has no schema, if one alone has none.
        for field_name in struct.__struct_fields__:
            try:
                msgspec.json.schema(hints[field_name])
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{where}: parameter {field_name!r}: its type"
                    f" {hints[field_name]!r} has no JSON Schema"
                ) from e
        raise ConfigError(f"{where}: no JSON Schema for its arguments: {e}") from e


def _values(
    name: str, arguments: dict[str, Any], struct: type[Any], positional: list[str]
) -> tuple[list[Any], dict[str, Any]]:
    """The call's arguments, converted: positional-only ones, and the rest."""
    parsed = parse_arguments(name, arguments, struct)
    kwargs = {f: getattr(parsed, f) for f in struct.__struct_fields__}
    return [kwargs.pop(p) for p in positional], kwargs


async def _call(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Call ``fn``: awaited if async, in a thread if not.

    Raises:
        ToolError: ``fn`` raised; a ToolError it raised is passed on as it is.
    """
    try:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args, **kwargs)
        out = await asyncio.to_thread(fn, *args, **kwargs)
        # A callable object or a partial may return a coroutine all the same.
        if inspect.isawaitable(out):
            out = await out
    except ToolError:
        raise
    except Exception as e:
        raise ToolError(
            f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        ) from e
    return out


def _builtins(name: str, result: Any) -> Any:
    try:
        return msgspec.to_builtins(result, str_keys=True)
    except (TypeError, ValueError) as e:
        raise ToolError(
            f"{name} returned {type(result).__name__}, which is not JSON-able: {e}"
        ) from e


_ARGS_HEADER = re.compile(r"^(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^(\s+)\**(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """A docstring's first paragraph, and its ``Args:`` (Google style)."""
    if not doc:
        return "", {}
    lines = doc.splitlines()
    first: list[str] = []
    for line in lines:
        if not line.strip():
            break
        first.append(line.strip())
    args: dict[str, str] = {}
    indent: str | None = None
    current: str | None = None
    inside = False
    for line in lines:
        if _ARGS_HEADER.match(line):
            inside = True
            continue
        if not inside:
            continue
        if line.strip() and not line[:1].isspace():
            break  # the next section
        m = _ARG_LINE.match(line)
        if m and (indent is None or m.group(1) == indent):
            indent, current = m.group(1), m.group(2)
            args[current] = m.group(3).strip()
        elif current is not None and line.strip():
            args[current] = f"{args[current]} {line.strip()}".strip()
    return " ".join(first), args
