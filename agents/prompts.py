"""Every prompt the agents send, in one place, each with a version.

A prompt's ``version`` is recorded with every model call it builds
(``ModelCalled.prompt_version``), so a postmortem knows which wording produced
an answer, and ``bb replay --verify`` can tell a changed prompt from a changed
model. Change a prompt's text: bump its version.

Pure: building a request reads nothing and writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agents.models import Message, ModelRequest

__all__ = [
    "AGGREGATE",
    "DELIVER",
    "EXECUTE",
    "EXPECTS",
    "PLAN",
    "REDO",
    "REDO_TEXT",
    "REDO_WRITE",
    "REPAIR",
    "REVIEW",
    "Prompt",
    "as_text",
]


@dataclass(frozen=True, slots=True)
class Prompt:
    """A versioned prompt template.

    ``user`` is a ``str.format`` template; its fields are filled with
    :func:`as_text` of the values given to :meth:`request`.
    """

    name: str
    version: int
    system: str
    user: str
    max_tokens: int = 2048

    @property
    def tag(self) -> str:
        """``name/vN``: what is recorded as the prompt version."""
        return f"{self.name}/v{self.version}"

    def request(
        self, model: str, metadata: dict[str, str], **values: Any
    ) -> ModelRequest:
        """Build the request for ``model`` with the template's fields filled."""
        text = self.user.format(**{k: as_text(v) for k, v in values.items()})
        return ModelRequest(
            model=model,
            system=self.system,
            messages=(Message("user", text),),
            max_tokens=self.max_tokens,
            prompt_version=self.tag,
            metadata=metadata,
        )

    def repair(
        self,
        model: str,
        metadata: dict[str, str],
        first: ModelRequest,
        answer: str,
        error: str,
    ) -> ModelRequest:
        """The one follow-up turn that asks the model to fix an invalid answer."""
        return ModelRequest(
            model=model,
            system=first.system,
            messages=(
                *first.messages,
                Message("assistant", answer),
                Message("user", REPAIR.user.format(error=error)),
            ),
            max_tokens=self.max_tokens,
            prompt_version=f"{self.tag}+{REPAIR.tag}",
            metadata={**metadata, "repair": "1"},
        )


def as_text(value: Any) -> str:
    """A value as prompt text: strings as they are, the rest as sorted JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False)


PLAN = Prompt(
    name="plan",
    version=1,
    system=(
        "You are the planner of a fleet of AI workers. Decompose the goal into a "
        "DAG of small, well-specified tasks. Each task runs on a lane: "
        "'frontier' (a strong cloud model: design, judgment, review) or 'local' "
        "(a small model on our own GPUs: volume work that is fully specified). "
        "Prefer 'local' for repetitive work. Answer with JSON only."
    ),
    user=(
        "Goal: {goal}\n\n"
        "Lanes available: {lanes}\n"
        "At most {max_tasks} tasks.\n\n"
        "Answer with one JSON object:\n"
        '{{"tasks": [{{"id": "short-id", "type": "execute" | "review", '
        '"lane": "frontier" | "local", "title": "...", "instruction": "...", '
        '"depends_on": ["other-id", ...]}}]}}\n'
        "Ids use letters, digits, '-' and '_'. Do not add a final summary task: "
        "one is added for you."
    ),
    max_tokens=8192,
)

EXECUTE = Prompt(
    name="execute",
    version=3,
    system=(
        "You are a worker in a fleet. Do exactly the task you are given. If a "
        "fact you need is missing, do not invent it: answer with one line "
        "'NEED: <what is missing>' and nothing else."
    ),
    user=(
        "Goal: {goal}\n\n"
        "Results of the tasks this one depends on:\n{dependencies}\n\n"
        "{answers}"
        "Your task: {title}\n"
        "{instruction}\n\n"
        "{expects}"
        "{deliver}"
    ),
)
"""v3, from running a real 135M model (docs/local-model.md): the task comes
last, after its context, and the form of the work is named (a unified diff,
JSON, SQL). v2 put the goal first and the task in the middle; the model
restated the goal ("The task is to add structured audit logging to every
write endpoint...") in 20 of 20 execute tasks, and 0 were usable; with v3's
order 10 of 20 were."""

EXPECTS: dict[str, str] = {
    "diff": (
        "The work is a patch: give it as a unified diff ('--- a/<file>', "
        "'+++ b/<file>', '@@ ... @@', then the lines, added ones starting with "
        "'+' and removed ones with '-').\n"
    ),
    "json": "The work is a JSON value{schema}: give it and nothing else.\n",
    "sql": "The work is SQL: give the statements, each ending with ';'.\n",
    "text": "",
}
"""What form an ``execute`` task's work takes, by what the task promises."""

DELIVER = (
    "Write your change to the workspace file `{artifact}` with the "
    "workspace.write tool, then answer with a short summary of it.\n"
)
"""How an execute task with an artifact is asked to deliver it (v2)."""

ANSWERS_HEADER = "Answers to what you asked:\n"
"""Introduces NEED answers in a re-run execute prompt (scripts match on it)."""

REVIEW = Prompt(
    name="review",
    version=1,
    system=(
        "You review the work of a fleet of workers against its goal. Be "
        "specific. Answer with JSON only."
    ),
    user=(
        "Goal: {goal}\n"
        "Review: {instruction}\n\n"
        "Work to review:\n{work}\n\n"
        "{fixups}"
        'Answer with one JSON object: {{"verdict": "approved" | '
        '"changes_requested", "notes": "...", "fixups": [{{"title": "...", '
        '"instruction": "...", "lane": "local" | "frontier"}}]}}'
    ),
)

FIXUPS_HEADER = "Fix-ups already done:\n"
"""Introduces fix-up results in a re-run review prompt (scripts match on it)."""

AGGREGATE = Prompt(
    name="aggregate",
    version=1,
    system=(
        "You close a goal worked on by a fleet of workers: summarise what was "
        "done, and say whether the goal is met. Answer with JSON only."
    ),
    user=(
        "Goal: {goal}\n\n"
        "Results:\n{results}\n\n"
        "{followups}"
        'Answer with one JSON object: {{"done": true | false, "summary": "...", '
        '"followups": [{{"title": "...", "instruction": "...", '
        '"lane": "local" | "frontier"}}]}}'
    ),
)

FOLLOWUPS_HEADER = "Follow-ups already done:\n"
"""Introduces follow-up results in a re-run aggregate prompt."""

REDO = Prompt(
    name="redo",
    version=1,
    system="",
    user="Your work could not be accepted: {error}\n{how}",
)
"""The one follow-up turn of an ``execute`` task whose work is not what it
promised (a patch that is not a diff, an echo of the task...)."""

REDO_TEXT = "Do the work and give its result, not a restatement of the task.\n"
"""What a redo asks for when the work is plain text."""

REDO_WRITE = (
    "Write it to the workspace file `{artifact}` with the workspace.write tool.\n"
)
"""Added to a redo when the work is a workspace file."""

REPAIR = Prompt(
    name="repair",
    version=1,
    system="",
    user=(
        "Your answer could not be used: {error}\n"
        "Answer again with the corrected JSON only, nothing else."
    ),
)
