"""Validating a DAG of task specs. Pure.

A submitted DAG must name each task once, depend only on tasks it names (or,
for spawned tasks, that already exist), and have no cycle. The result is the
tasks in a dependency order, so appending them in that order means every
TaskCreated in the log names only tasks created before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blackboard.errors import InvalidDag
from blackboard.log.subjects import check_token

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from blackboard.log.events import TaskSpec


def order(specs: Sequence[TaskSpec], existing: Iterable[str] = ()) -> list[TaskSpec]:
    """Return ``specs`` in dependency order, or raise InvalidDag saying why.

    Args:
        specs: the new tasks.
        existing: ids of tasks already in the goal, which new tasks may
            depend on.
    """
    known = set(existing)
    by_id: dict[str, TaskSpec] = {}
    for spec in specs:
        try:
            check_token(spec.task_id, "task id")
            check_token(spec.lane, f"lane of task {spec.task_id!r}", id_like=False)
        except ValueError as e:
            raise InvalidDag(str(e)) from e
        if spec.task_id in by_id or spec.task_id in known:
            raise InvalidDag(f"task id {spec.task_id!r} is used twice")
        by_id[spec.task_id] = spec
    for spec in specs:
        for dep in spec.depends_on:
            if dep not in by_id and dep not in known:
                raise InvalidDag(
                    f"task {spec.task_id!r} depends on unknown task {dep!r}"
                )
    # Iterative depth-first topological sort (chains can be long) that names
    # the cycle it finds.
    done: set[str] = set(known)
    out: list[TaskSpec] = []
    for root in specs:
        if root.task_id in done:
            continue
        path: list[str] = [root.task_id]
        on_path = {root.task_id}
        stack: list[Iterator[str]] = [iter(root.depends_on)]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                tid = path.pop()
                on_path.discard(tid)
                done.add(tid)
                out.append(by_id[tid])
            elif nxt in on_path:
                cycle = [*path[path.index(nxt) :], nxt]
                raise InvalidDag("dependency cycle: " + " -> ".join(cycle))
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(by_id[nxt].depends_on))
    return out
