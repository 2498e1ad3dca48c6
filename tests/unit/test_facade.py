"""The public facade handler authors import from."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import blackboard


def test_all_is_sorted_and_every_name_resolves():
    names = [n for n in blackboard.__all__ if n != "__version__"]
    assert names == sorted(names)
    for name in names:
        assert getattr(blackboard, name) is not None


def test_facade_names_are_the_engine_s_own_objects():
    handlers = importlib.import_module("blackboard.engine.handlers")
    assert blackboard.RetryableError is handlers.RetryableError
    assert blackboard.TaskContext.__module__ == "blackboard.engine.context"


@pytest.mark.integration
def test_importing_the_package_loads_no_sdk():
    code = (
        "import sys, blackboard, blackboard.log.events; "
        "print(sorted(m for m in ('nats', 'duckdb', 'anthropic', 'openai') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
