"""Redaction of what is recorded: goals, prompts and answers. Pure.

What a user submitted, what a model saw and what it said go into the log for
good, so what must not be kept is removed before it is written (the goal's
text and payloads at submission, each ModelCalled, and the answer a handler
goes on with): the process's own
API keys (whatever the text they appear in), anything that looks like a
provider key or a bearer token, and the patterns a deployment configures
(``redact = [...]`` in ``bb.toml``: regular expressions, e.g. card numbers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MASK", "SECRET_ENV", "Redactor"]

MASK = "[redacted]"

SECRET_ENV = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "BB_LOCAL_API_KEY")
"""Variables whose values never appear in what is recorded."""

_BUILTIN = (
    r"\bsk-(?:ant-)?[A-Za-z0-9_\-]{16,}",  # Anthropic and OpenAI key shapes
    r"\b[Bb][Ee][Aa][Rr][Ee][Rr]\s+[A-Za-z0-9._\-~+/]{8,}=*",  # Authorization: Bearer
)


class Redactor:
    """Replaces secrets and configured patterns in strings, recursively.

    Args:
        patterns: Regular expressions from the configuration.
        secrets: Literal values that must never be recorded (API keys).
    """

    def __init__(
        self, patterns: Iterable[str] = (), secrets: Iterable[str] = ()
    ) -> None:
        literal = [
            re.escape(s) for s in sorted(set(secrets), key=len, reverse=True) if s
        ]
        parts = [*literal, *_BUILTIN, *patterns]
        try:
            self._re = re.compile("|".join(f"(?:{p})" for p in parts))
        except re.error as e:
            raise ValueError(f"invalid redact pattern: {e}") from e

    @classmethod
    def from_env(cls, patterns: Iterable[str], env: Mapping[str, str]) -> Redactor:
        """A redactor for this process: its keys and the configured patterns."""
        return cls(patterns, [env.get(name, "") for name in SECRET_ENV])

    def text(self, value: str) -> str:
        """``value`` with every match replaced by the mask."""
        return self._re.sub(MASK, value)

    def apply(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value (keys included)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.apply(k): self.apply(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.apply(v) for v in value]
        return value
