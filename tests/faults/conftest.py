"""The fault suite's deployment fixture and its report (build/fault-report.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.faults.harness import REPORT, Deployment, running

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from blackboard.log.store import JetStreamEventStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with running(Deployment(tmp_path)) as d:
        yield d


@pytest.fixture
async def fstore(deployment: Deployment) -> AsyncIterator[JetStreamEventStore]:
    async for s in deployment.store():
        yield s


@pytest.fixture(scope="session", autouse=True)
def fault_report() -> Iterator[None]:
    yield
    if not REPORT:
        return
    lines = [
        "| fault | goals | tasks | side effects | lost | doubled | projection "
        "| also checked |",
        "|---|---:|---:|---:|---:|---:|---|---|",
        *(
            f"| {r.fault} | {r.goals} | {r.tasks} | {r.effects} | {r.lost} "
            f"| {r.doubled} | {r.projection} | {r.checked} |"
            for r in REPORT
        ),
    ]
    out = ROOT / "build" / "fault-report.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
