"""Whether a piece of work is what its task promised. Pure.

A format check is not enough: a small model answers an ``execute`` task with
prose that restates the task ("The task is to add structured audit logging
... Task: Add structured audit logging to POST /orders"), and that is not a
patch. :func:`check` looks at what was delivered (the artifact the agent
wrote, or its answer) against what the task promises:

- ``diff``: a unified diff, raw or in a fenced ``diff`` block, with at least
  one added or removed line;
- ``json``: a JSON value, matching the task's JSON Schema if it has one;
- ``sql``: at least one SQL statement;
- ``text``: anything that is not empty and not an echo of the task.

Every kind must also be more than an echo of the instruction it was given.
What the task promises comes from its payload (``expects``), else from its
artifact's suffix (``.patch`` and ``.diff`` promise a diff, ``.json`` JSON,
``.sql`` SQL), else ``text``.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from agents.answers import InvalidAnswer

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["KINDS", "Kind", "check", "echoes", "expected_kind"]

Kind = Literal["text", "diff", "json", "sql"]
KINDS: Final[tuple[str, ...]] = get_args(Kind)

_BY_SUFFIX: Final[dict[str, Kind]] = {
    ".patch": "diff",
    ".diff": "diff",
    ".json": "json",
    ".sql": "sql",
}

ECHO_WORDS: Final = 0.9
ECHO_TRIPLES: Final = 0.5
"""An answer echoes its task when this share of its words, and this share of
its runs of three words, are found in the task: it says nothing new. (Seen
from a 135M model: "The task is to add structured audit logging to every
write endpoint of the order service. Task: Add structured audit logging to
POST /orders", 96% of its words and 58% of its triples from the prompt.)"""

_WORD = re.compile(r"[a-z0-9_]+")
_FENCED = re.compile(r"```[ \t]*(\w*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_SQL_FENCES: Final = frozenset({"", "sql", "psql", "postgresql", "postgres"})
_SQL = re.compile(
    r"^\s*(create|alter|insert|update|delete|drop|select|with|grant|comment)\b"
    r"[^;]*(;|\Z)",
    re.IGNORECASE | re.MULTILINE,
)


def expected_kind(payload: Mapping[str, Any]) -> Kind:
    """What an ``execute`` task's output must be, from its payload.

    Raises:
        InvalidAnswer: ``expects`` names no known kind (the plan is wrong).
    """
    wanted = payload.get("expects")
    if wanted is not None:
        if wanted not in KINDS:
            raise InvalidAnswer(
                f"unknown expects {wanted!r}; one of {', '.join(KINDS)}"
            )
        return wanted  # type: ignore[no-any-return]
    artifact = payload.get("artifact")
    if isinstance(artifact, str):
        for suffix, kind in _BY_SUFFIX.items():
            if artifact.lower().endswith(suffix):
                return kind
    return "text"


def check(
    kind: Kind,
    output: str,
    *,
    task: str,
    schema: Mapping[str, Any] | None = None,
) -> None:
    """Raise InvalidAnswer, saying what is wrong, unless ``output`` is ``kind``.

    ``task`` is the text the worker was given (title and instruction): an
    output that only repeats it is not work.
    """
    if not output.strip():
        raise InvalidAnswer("the answer is empty")
    if echoes(output, task):
        raise InvalidAnswer(
            "the answer only restates the task; do the work it asks for"
        )
    if kind == "diff":
        _diff(output)
    elif kind == "json":
        _json(output, schema)
    elif kind == "sql":
        _sql(output)


def echoes(output: str, task: str) -> bool:
    """Whether ``output`` only repeats words and phrases of ``task``."""
    words = _WORD.findall(output.lower())
    if not words:
        return False
    known = set(_WORD.findall(task.lower()))
    if sum(w in known for w in words) / len(words) < ECHO_WORDS:
        return False
    said = _triples(output)
    if not said:  # too short for triples: every word came from the task
        return True
    return len(said & _triples(task)) / len(said) >= ECHO_TRIPLES


def _triples(text: str) -> set[tuple[str, str, str]]:
    words = _WORD.findall(text.lower())
    return {(a, b, c) for a, b, c in zip(words, words[1:], words[2:], strict=False)}


def _diff(output: str) -> None:
    blocks = [
        body
        for lang, body in _FENCED.findall(output)
        if lang.lower() in ("diff", "patch", "udiff")
    ]
    candidates = blocks or [output]
    for text in candidates:
        lines = text.splitlines()
        unified = any(ln.startswith("@@") for ln in lines) or any(
            ln.startswith("--- ") for ln in lines
        )
        changed = [
            ln
            for ln in lines
            if ln.startswith(("+", "-"))
            and not ln.startswith(("+++", "---"))
            and ln[1:].strip()
        ]
        if changed and (blocks or unified):
            return
    if blocks:
        raise InvalidAnswer(
            "the diff block has no added or removed line ('+...' or '-...')"
        )
    raise InvalidAnswer(
        "the answer is not a patch: expected a unified diff ('--- a/file', "
        "'+++ b/file', '@@ ... @@', then '+'/'-' lines) or a ```diff block"
    )


def _sql(output: str) -> None:
    fenced = _FENCED.findall(output)
    # SQL quoted inside a program (a ```python block) is not a migration.
    candidates = (
        [body for lang, body in fenced if lang.lower() in _SQL_FENCES]
        if fenced
        else [output]
    )
    for text in candidates:
        for found in _SQL.finditer(text):
            statement = found.group(0)
            if statement.count("(") == statement.count(")"):
                return
    raise InvalidAnswer(
        "the answer holds no complete SQL statement (CREATE, ALTER, INSERT,"
        " ...), bare or in a ```sql block"
    )


def _unfenced(output: str) -> str:
    """The body of the first fenced block, else the whole text."""
    found = _FENCED.search(output)
    return found.group(2) if found else output


def _json(output: str, schema: Mapping[str, Any] | None) -> None:
    text = _unfenced(output).strip()
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidAnswer(f"the answer is not valid JSON: {e}") from e
    if schema is None:
        return
    import jsonschema

    try:
        jsonschema.validate(value, dict(schema))
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "the top level"
        raise InvalidAnswer(
            f"the JSON does not match its schema at {where}: {e.message}"
        ) from e
    except jsonschema.SchemaError as e:
        raise InvalidAnswer(f"the task's JSON Schema is invalid: {e.message}") from e
