"""The cluster fault suite's deployment fixture; its rows join the fault report."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.cluster.harness import ClusterDeployment
from tests.faults.conftest import fault_report  # noqa: F401  (its rows, too)
from tests.faults.harness import running

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from blackboard.log.store import JetStreamEventStore


@pytest.fixture
def cdeployment(tmp_path: Path) -> Iterator[ClusterDeployment]:
    with running(ClusterDeployment(tmp_path)) as d:
        yield d


@pytest.fixture
async def cstore(cdeployment: ClusterDeployment) -> AsyncIterator[JetStreamEventStore]:
    async for s in cdeployment.store():
        yield s
