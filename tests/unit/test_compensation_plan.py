"""The undo plan (agents/compensation.py): what is undone, in which order, and
what is left to a human, from a goal's log alone."""

from __future__ import annotations

import itertools
from typing import Any

from agents.compensation import (
    IRREVERSIBLE,
    NO_UNDO,
    OLD_ARTIFACT,
    UNKNOWN,
    plan,
    summary,
)
from blackboard.log import events as ev
from blackboard.log.codec import Envelope
from tests.factories import at

G = "G1"


def envs(*events: ev.AnyEvent) -> list[Envelope]:
    return [Envelope(i, "s", e) for i, e in enumerate(events, start=1)]


_n = itertools.count(1)


def base(task: str | None = "T1") -> dict[str, Any]:
    n = next(_n)
    return {
        "event_id": f"e{n}",
        "goal_id": G,
        "task_id": task,
        "at": at(n),
        "actor": "w",
    }


def call(
    cid: str,
    tool: str = "workspace.write",
    args: Any = None,
    *,
    effect: str = "reversible",
    result: Any = None,
    error: str | None = None,
    refused: bool = False,
    task: str = "T1",
    end: bool = True,
) -> list[ev.AnyEvent]:
    key = f"{G}:{task}:1.1:{cid}"
    out: list[ev.AnyEvent] = [
        ev.ToolCallStarted(
            **base(task),
            tool=tool,
            call_id=cid,
            idempotency_key=key,
            arguments=args,
            effect=effect,
        )
    ]
    if end:
        out.append(
            ev.ToolCallFinished(
                **base(task),
                tool=tool,
                call_id=cid,
                idempotency_key=key,
                result=result,
                error=error,
                refused=refused,
                effect=effect,
            )
        )
    return out


def written(path: str, previous: str | None) -> dict[str, Any]:
    return {
        "path": path,
        "sha256": "new",
        "previous": {"existed": previous is not None, "content": previous},
    }


def effect(
    name: str, *, result: Any = None, error: str | None = None, end: bool = True
) -> list[ev.AnyEvent]:
    key = f"T1:{name}"
    out: list[ev.AnyEvent] = [
        ev.SideEffectStarted(**base(), name=name, idempotency_key=key)
    ]
    if end and error is None:
        out.append(
            ev.SideEffectCompleted(
                **base(), name=name, idempotency_key=key, result=result
            )
        )
    elif end and error is not None:
        out.append(
            ev.SideEffectFailed(**base(), name=name, idempotency_key=key, error=error)
        )
    return out


def test_reversible_calls_are_undone_newest_first():
    log = envs(
        *call("c1", args={"path": "a.txt"}, result=written("a.txt", "A0")),
        *call("c2", args={"path": "b.txt"}, result=written("b.txt", None), task="T2"),
        *call("c3", args={"path": "a.txt"}, result=written("a.txt", "A1")),
    )
    p = plan(log)
    assert [r.key.rsplit(":", 1)[1] for r in p.undo] == ["c3", "c2", "c1"]
    assert [r.task_id for r in p.undo] == ["T1", "T2", "T1"]
    first = p.undo[-1]
    assert first.arguments == {"path": "a.txt"}
    assert first.result == written("a.txt", "A0")
    assert first.origin == "tool_call" and first.effect == "reversible"
    assert p.needs_human == () and p.reported == () and p.undone == ()
    assert not p.empty


def test_the_order_is_that_of_the_calls_ends():
    """Two calls overlapping: the one that finished last is undone first."""
    c1, c2 = (
        call("c1", result=written("a", None)),
        call("c2", result=written("b", None)),
    )
    p = plan(envs(c1[0], c2[0], c2[1], c1[1]))
    assert [r.key[-2:] for r in p.undo] == ["c1", "c2"]


def test_reads_errors_and_refusals_are_ignored():
    p = plan(
        envs(
            *call("r", "workspace.read", effect="read", result={"content": "x"}),
            *call("r2", "workspace.read", effect="read", end=False),
            *call("e", error="disk full"),
            *call("x", "python.step", effect="irreversible", error="boom"),
            *call("f", refused=True, error="path leaves the workspace"),
        )
    )
    assert p.empty


def test_irreversible_and_unfinished_calls_need_a_human():
    p = plan(
        envs(
            *call("w", result=written("a", None)),
            *call("s", "python.step", {"n": 1}, effect="irreversible", result=1),
            *call("u", args={"path": "b"}, end=False),
            *call("v", "python.step", {"n": 2}, effect="irreversible", end=False),
        )
    )
    assert [r.key[-1] for r in p.undo] == ["w"]
    assert [(n.recorded.key[-1], n.reason) for n in p.needs_human] == [
        ("v", UNKNOWN),
        ("u", UNKNOWN),
        ("s", IRREVERSIBLE),
    ]
    step = p.needs_human[-1].recorded
    assert step.name == "python.step" and step.arguments == {"n": 1}
    assert step.effect == "irreversible"


def test_a_resumed_call_counts_once_with_its_last_end():
    """A call redone after a crash starts again under the same key."""
    first, again = call("c", end=False), call("c", result=written("a", "A0"))
    p = plan(envs(*first, *again))
    assert len(p.undo) == 1 and p.undo[0].result == written("a", "A0")
    assert p.needs_human == ()


def test_side_effects_artifacts_are_undone_others_need_a_human():
    p = plan(
        envs(
            *effect("write:report.md", result=written("report.md", None)),
            *effect("write:old.md", result={"path": "old.md", "sha256": "x"}),
            *effect("open_pr", result={"pr": 7}),
            *effect("deploy", end=False),
            *effect("notify", error="RuntimeError: down"),
        )
    )
    [artifact] = p.undo
    assert artifact.origin == "side_effect" and artifact.name == "write:report.md"
    assert artifact.key == "T1:write:report.md" and artifact.effect == "reversible"
    assert [(n.recorded.name, n.reason) for n in p.needs_human] == [
        ("deploy", UNKNOWN),
        ("open_pr", NO_UNDO),
        ("write:old.md", OLD_ARTIFACT),
    ]


def compensated(key: str, **kw: Any) -> ev.EffectCompensated:
    return ev.EffectCompensated(
        **base(), name="workspace.write", idempotency_key=key, **kw
    )


def test_planning_again_plans_nothing_twice():
    calls = [
        *call("c1", result=written("a", "A0")),
        *call("c2", result=written("a", "A1")),
        *call("s", "python.step", {"n": 1}, effect="irreversible", result=1),
    ]
    first = plan(envs(*calls))
    assert [r.key[-2:] for r in first.undo] == ["c2", "c1"]
    # The first compensation undid c2, reported s, then stopped (a crash).
    done: list[ev.AnyEvent] = [
        compensated(first.undo[0].key, result={"action": "restored"}),
        ev.CompensationNeeded(
            **base(),
            name="python.step",
            idempotency_key=first.needs_human[0].recorded.key,
            reason=IRREVERSIBLE,
        ),
    ]
    second = plan(envs(*calls, *done))
    assert [r.key[-2:] for r in second.undo] == ["c1"]
    assert second.needs_human == ()
    assert [(n.recorded.name, n.reason) for n in second.reported] == [
        ("python.step", IRREVERSIBLE)
    ]
    assert second.undone == (first.undo[0].key,)
    third = plan(envs(*calls, *done, compensated(first.undo[1].key)))
    assert third.undo == () and third.needs_human == ()
    assert len(third.undone) == 2 and not third.empty


def test_a_failed_undo_is_planned_again_and_a_reported_one_is_not():
    calls = [*call("c1", result=written("a", "A0")), *call("c2", result={"x": 1})]
    keys = [e.idempotency_key for e in calls if isinstance(e, ev.ToolCallStarted)]
    failed = ev.CompensationFailed(
        **base(), name="workspace.write", idempotency_key=keys[0], error="changed"
    )
    needed = ev.CompensationNeeded(
        **base(),
        name="workspace.write",
        idempotency_key=keys[1],
        effect="reversible",
        reason="its recorded result was redacted",
    )
    p = plan(envs(*calls, failed, needed))
    assert [r.key for r in p.undo] == [keys[0]]
    assert [(n.recorded.key, n.reason) for n in p.reported] == [
        (keys[1], "its recorded result was redacted")
    ]


def test_goal_level_events_and_other_kinds_are_ignored():
    p = plan(
        envs(
            ev.GoalSubmitted(**base(None), text="x"),
            ev.TaskCompleted(**base(), result={"artifact": "a"}),
            ev.GoalCancelled(**base(None), compensate=True),
        )
    )
    assert p.empty


def test_summary_is_one_clipped_line_of_sorted_json():
    assert summary(None) == ""
    assert summary({"path": "a", "content": "x\ny"}) == (
        '{"content": "x\\ny", "path": "a"}'
    )
    long = summary({"content": "é" * 1000})
    assert len(long) == 300 and long.endswith("…")
