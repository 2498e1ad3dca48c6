"""What counts as the work a task promised: the outcome checks. Pure."""

from __future__ import annotations

import pytest

from agents.answers import InvalidAnswer
from agents.outcomes import check, echoes, expected_kind

PROMPT = (
    "Goal: Add structured audit logging to every write endpoint of the orders "
    "service\nTask: add audit logging to POST /orders\nInstruction: In the "
    "handler of POST /orders, emit the audit event from the schema after the "
    "write commits; include the before/after diff of changed fields.\n"
)
# Answers SmolLM2-135M gave to that prompt (docs/local-model.md).
ECHO = (
    "The task is to add structured audit logging to every write endpoint of the "
    "order service.\nTask: Add structured audit logging to POST /orders"
)
UNIFIED = (
    "--- a/orders/api.py\n+++ b/orders/api.py\n@@ -10,3 +10,4 @@\n"
    "     db.commit()\n+    audit.emit(event)\n"
)
FENCED = "Patched POST /orders:\n```diff\n+    audit.emit(AuditEvent(...))\n```\n"


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ({}, "text"),
        ({"artifact": "patches/a.patch"}, "diff"),
        ({"artifact": "x.DIFF"}, "diff"),
        ({"artifact": "out/report.json"}, "json"),
        ({"artifact": "migrations/0042.sql"}, "sql"),
        ({"artifact": "notes.md"}, "text"),
        ({"artifact": "a.patch", "expects": "text"}, "text"),
    ],
)
def test_what_a_task_promises(payload: dict[str, object], kind: str) -> None:
    assert expected_kind(payload) == kind


def test_an_unknown_promise_is_refused() -> None:
    with pytest.raises(InvalidAnswer, match="unknown expects 'yaml'"):
        expected_kind({"expects": "yaml"})


@pytest.mark.parametrize("patch", [UNIFIED, FENCED])
def test_a_patch_is_a_diff(patch: str) -> None:
    check("diff", patch, task=PROMPT)


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        (ECHO, "only restates the task"),
        ("I added audit.emit after the commit.", "not a patch"),
        ("```diff\n  unchanged context only\n```", "no added or removed line"),
        ("- a list item\n+ another", "not a patch"),  # no diff markers at all
    ],
)
def test_what_is_not_a_patch(output: str, why: str) -> None:
    with pytest.raises(InvalidAnswer, match=why):
        check("diff", output, task=PROMPT)


def test_an_echo_is_refused_whatever_the_kind() -> None:
    with pytest.raises(InvalidAnswer, match="restates"):
        check("text", ECHO, task=PROMPT)
    assert echoes("add audit logging", PROMPT)  # too short for triples
    assert not echoes(
        "Log the approved refund amount in minor units, with its currency.",
        PROMPT,
    )
    assert not echoes(UNIFIED, PROMPT)


def test_repeating_the_redo_request_back_is_an_echo() -> None:
    asked = (
        "Your work could not be accepted: the answer only restates the task; do"
        " the work it asks for\nDo the work and give its result, not a"
        " restatement of the task.\n"
    )
    # What the model answered to that, in bb demo --real-local.
    answer = (
        "Your work could not be accepted: the answer only restates the task; "
        "give your result, not a restatement of the task."
    )
    assert echoes(answer, PROMPT + asked)
    assert not echoes(answer, PROMPT)


def test_json_is_checked_against_its_schema() -> None:
    schema = {
        "type": "object",
        "required": ["endpoints"],
        "properties": {"endpoints": {"type": "array", "items": {"type": "string"}}},
    }
    check(
        "json", '```json\n{"endpoints": ["POST /orders"]}\n```', task="", schema=schema
    )
    check("json", "[1, 2]", task="")  # no schema: any JSON
    with pytest.raises(InvalidAnswer, match="not valid JSON"):
        check("json", "endpoints: POST /orders", task="")
    with pytest.raises(InvalidAnswer, match="at endpoints/0: 3 is not of type"):
        check("json", '{"endpoints": [3]}', task="", schema=schema)
    with pytest.raises(
        InvalidAnswer, match="at the top level: 'endpoints' is a required"
    ):
        check("json", "{}", task="", schema=schema)


def test_sql_holds_a_statement() -> None:
    check("sql", "-- migration\nCREATE TABLE audit_log (id TEXT);", task="")
    check("sql", "```sql\nalter table t add column c int;\n```", task="")
    check("sql", "```\nCREATE TABLE t (id INT);\n```", task="")
    for not_sql in (
        "The migration creates the audit_log table.",
        # What the 135M model gave: SQL quoted in Python, cut off mid-table.
        '```python\nsql = """\n  CREATE TABLE audit_log (\n    event_id text\n"""\n```',
        "CREATE TABLE audit_log (\n  event_id text,",  # cut off
    ):
        with pytest.raises(InvalidAnswer, match="no complete SQL statement"):
            check("sql", not_sql, task="")
