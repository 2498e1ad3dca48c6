"""Help and conventions: -h, --version, groups, flags shown as flags, --json."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from blackboard import __version__
from blackboard.cli import app
from tests.e2e.test_cli_basics import bb

runner = CliRunner()


def test_short_help_version_and_groups():
    r = runner.invoke(app, ["-h"])
    assert r.exit_code == 0
    groups = ["Getting started", "Operate", "Inspect", "Deploy and measure"]
    at = [r.output.index(g) for g in groups]
    assert at == sorted(at)
    assert "--install-completion" in r.output
    v = runner.invoke(app, ["--version"])
    assert v.exit_code == 0 and v.output.strip() == f"bb {__version__}"


def test_flags_are_not_shown_as_taking_a_value():
    r = runner.invoke(app, ["replay", "-h"])
    assert r.exit_code == 0
    full = next(line for line in r.output.splitlines() if "--full" in line)
    assert "<bool>" not in full
    at = next(line for line in r.output.splitlines() if "--at" in line)
    assert "<int" in at  # options that take a value still say which


def test_contradictory_flags_are_refused():
    r = runner.invoke(app, ["replay", "G", "--format", "html", "--json"])
    assert r.exit_code == 2 and "contradict" in r.output
    r = runner.invoke(app, ["sql", "SELECT 1", "--format", "csv", "--json"])
    assert r.exit_code == 2 and "contradict" in r.output


@pytest.mark.integration
def test_sql_json_like_every_data_command(cli_env):
    r = bb(["demo", "--json"], cli_env, timeout=120)
    assert r.returncode == 0, r.stderr
    r = bb(["sql", "SELECT count(*) AS n FROM goals", "--json"], cli_env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"n": 1}]
