r"""A deterministic, offline twin of the model providers.

:class:`ScriptedModel` answers from a :class:`Script`: an ordered list of
rules, the first matching rule wins. A rule matches on the request's
``task_type`` metadata, a regular expression over its text (tool calls and
tool results included), its model name and its turn; its reply may quote the
regex's groups. A rule may also fail its first few calls with a given HTTP
status, so demos and tests can exercise retries and fallback without a network.

A rule may call tools: ``tool_calls`` lists them (``name``, ``arguments``),
and every string in the arguments may quote the regex's groups as ``reply``
does. ``turn`` matches the number of assistant turns already in the
conversation (0 on the first call, 1 after one round of tool calls...), so a
script can call a tool first and answer once the result is back. Scripted
calls get deterministic ids, ``call_<rule index>_<turn>_<n>``, and the answer
stops with ``tool_use`` unless the rule sets ``stop_reason``.

A script as JSON::

    {"rules": [
      {"task_type": "plan", "reply": "[]",
       "fail_status": 429, "fail_times": 1, "retry_after": 2},
      {"contains": "goal: (?P<goal>[^\\n]+)",
       "reply": "{\"tasks\": [{\"title\": \"research {goal}\"}]}"},
      {"task_type": "execute", "turn": 0, "contains": "Task: (?P<t>[^\\n]+)",
       "reply": "Writing it down.",
       "tool_calls": [{"name": "workspace.write",
                       "arguments": {"path": "notes.md", "text": "{t}"}}]},
      {"task_type": "execute", "turn": 1, "reply": "Written to notes.md."},
      {"reply": "done"}
    ]}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from agents.models import (
    ModelClient,
    ModelRequest,
    ModelResponse,
    TerminalModelError,
    ToolCall,
    approx_tokens,
    error_for_status,
    input_text,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Rule", "Script", "ScriptedModel", "ScriptedToolCall", "render_reply"]


class ScriptedToolCall(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """One tool call a rule makes."""

    name: str
    """The tool's Blackboard name (``workspace.write``)."""
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    """The arguments. Every string in them, at any depth, may quote the
    ``contains`` match's groups with ``{1}`` or ``{name}``, as ``reply`` does."""


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One scripted answer and the requests it applies to.

    Every matcher that is set must match; a rule with none matches everything.
    """

    reply: str = ""
    """The answer; ``{1}`` or ``{name}`` quote the ``contains`` match's groups."""
    tool_calls: tuple[ScriptedToolCall, ...] = ()
    """Tool calls the answer makes, in order (after ``reply``'s text)."""
    task_type: str | None = None
    """Equals ``request.metadata["task_type"]``."""
    contains: str | None = None
    """A regex searched (DOTALL) over the system prompt and every message,
    with their tool calls and tool results (see :func:`agents.models.input_text`)."""
    model: str | None = None
    """Equals ``request.model``."""
    turn: int | None = None
    """Equals the number of assistant turns already in ``request.messages``:
    0 on a task's first call, 1 after one round of tool calls, ..."""
    stop_reason: str | None = None
    """The stop reason reported with the reply; ``None`` means ``tool_use``
    when the rule calls tools, else ``end_turn``."""
    fail_status: int | None = None
    """When set, the first ``fail_times`` matching calls fail with this status."""
    fail_times: int = 0
    """How many matching calls fail before the rule starts answering."""
    retry_after: float | None = None
    """The ``retry-after`` the failures carry, when retryable."""


class Script(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An ordered list of rules; the first that matches answers."""

    rules: tuple[Rule, ...]

    @classmethod
    def load(cls, path: str | Path) -> Script:
        """Read a script from a JSON file (an object with ``rules``, or a list).

        Raises:
            msgspec.ValidationError: The file is not a valid script.
        """
        return cls.from_dict(msgspec.json.decode(Path(path).read_bytes()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | list[Any]) -> Script:
        """Build a script from decoded JSON (an object with ``rules``, or a list).

        Raises:
            msgspec.ValidationError: The data is not a valid script.
        """
        if isinstance(data, list):
            data = {"rules": data}
        return msgspec.convert(data, cls)


_PLACEHOLDER = re.compile(r"\{(\d+|[A-Za-z_][A-Za-z0-9_]*)\}")


def render_reply(reply: str, match: re.Match[str] | None) -> str:
    """Fill ``{1}`` / ``{name}`` placeholders from a regex match.

    Only placeholders naming a group of ``match`` are replaced (``{0}`` is the
    whole match, an unmatched group becomes empty); every other brace is left
    as it is, so JSON replies survive.

    Args:
        reply: The rule's reply template.
        match: The ``contains`` match, or ``None`` (nothing is replaced).

    Returns:
        The reply with its known placeholders filled in.
    """
    if match is None:
        return reply
    groups = match.re.groups
    names = match.re.groupindex

    def fill(placeholder: re.Match[str]) -> str:
        key = placeholder.group(1)
        if key.isdigit():
            index = int(key)
            if index <= groups:
                return match.group(index) or ""
        elif key in names:
            return match.group(key) or ""
        return placeholder.group(0)

    return _PLACEHOLDER.sub(fill, reply)


def _render_arguments(value: Any, match: re.Match[str] | None) -> Any:
    """Fill placeholders in every string of a tool call's arguments."""
    if isinstance(value, str):
        return render_reply(value, match)
    if isinstance(value, dict):
        return {k: _render_arguments(v, match) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_arguments(v, match) for v in value]
    return value


def _json(value: Any) -> str:
    return msgspec.json.encode(value, order="deterministic").decode()


class ScriptedModel(ModelClient):
    """A :class:`ModelClient` that answers from a script, with no network.

    Token counts are deterministic: ``max(1, ceil(len(text) / 4))`` over the
    input (:func:`agents.models.input_text`) and over the output (the reply,
    then each tool call's name and JSON arguments, joined by newlines).

    Args:
        script: The rules, or their decoded JSON.
        provider: The provider name recorded with every call.

    Raises:
        re.error: A rule's ``contains`` is not a valid regex.
    """

    def __init__(
        self,
        script: Script | Mapping[str, Any] | list[Any],
        *,
        provider: str = "scripted",
    ) -> None:
        self.provider = provider
        self.script = script if isinstance(script, Script) else Script.from_dict(script)
        self._patterns = [
            re.compile(rule.contains, re.DOTALL) if rule.contains is not None else None
            for rule in self.script.rules
        ]
        # Failures already served, per rule index: the counter lives with this
        # instance so that two models never share a script's failure budget.
        self._failures: dict[int, int] = {}

    @classmethod
    def from_file(
        cls, path: str | Path, *, provider: str = "scripted"
    ) -> ScriptedModel:
        """Build a model from a JSON script file."""
        return cls(Script.load(path), provider=provider)

    async def aclose(self) -> None:
        """Do nothing: a scripted model holds no connections."""

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer from the first matching rule.

        Args:
            request: The provider-neutral request.

        Returns:
            The scripted reply, marked ``scripted=True``.

        Raises:
            RetryableModelError: The rule is scripted to fail with 408, 409,
                429 or 5xx for this call.
            TerminalModelError: No rule matches, or the rule is scripted to
                fail with another status. Either error has ``scripted`` set,
                so a failed call is recorded as scripted too.
        """
        text = input_text(request)
        turn = sum(1 for m in request.messages if m.role == "assistant")
        for index, (rule, pattern) in enumerate(
            zip(self.script.rules, self._patterns, strict=True)
        ):
            if rule.task_type is not None and (
                request.metadata.get("task_type") != rule.task_type
            ):
                continue
            if rule.model is not None and request.model != rule.model:
                continue
            if rule.turn is not None and turn != rule.turn:
                continue
            match = pattern.search(text) if pattern is not None else None
            if pattern is not None and match is None:
                continue
            if rule.fail_status is not None:
                served = self._failures.get(index, 0)
                if served < rule.fail_times:
                    self._failures[index] = served + 1
                    msg = (
                        f"scripted failure {rule.fail_status} from rule {index}"
                        f" (call {served + 1} of {rule.fail_times})"
                    )
                    error = error_for_status(
                        rule.fail_status, msg, retry_after=rule.retry_after
                    )
                    error.scripted = True
                    raise error
            reply = render_reply(rule.reply, match)
            calls = tuple(
                ToolCall(
                    id=f"call_{index}_{turn}_{n}",
                    name=call.name,
                    arguments=_render_arguments(call.arguments, match),
                )
                for n, call in enumerate(rule.tool_calls)
            )
            raw: dict[str, Any] = {"scripted": True, "rule": index, "text": reply}
            if calls:
                raw["tool_calls"] = [msgspec.to_builtins(c) for c in calls]
            # The calls count as output, written out as input_text writes them.
            output = "\n".join(
                [reply, *(f"{c.name} {_json(c.arguments)}" for c in calls)]
            )
            return ModelResponse(
                provider=self.provider,
                model=request.model,
                text=reply,
                stop_reason=rule.stop_reason or ("tool_use" if calls else "end_turn"),
                tokens_in=approx_tokens(text),
                tokens_out=approx_tokens(output),
                tool_calls=calls,
                raw=raw,
                scripted=True,
            )
        last_user = next(
            (m.content for m in reversed(request.messages) if m.role == "user"), ""
        )
        msg = (
            "scripted model has no rule for this request"
            f" (model={request.model!r},"
            f" task_type={request.metadata.get('task_type')!r}): {last_user[:200]!r}"
        )
        error = TerminalModelError(msg)
        error.scripted = True
        raise error
