"""Every command that takes a path, given a bad one: one line naming it, non-zero."""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_cli_basics import bb

pytestmark = pytest.mark.integration


@pytest.fixture
def demo_goal(cli_env, tmp_path):
    """A finished demo goal, its NDJSON export and a projection file."""
    r = bb(["demo", "--json"], cli_env, timeout=120)
    assert r.returncode == 0, r.stderr
    goal = json.loads(r.stdout)["goal_id"]
    ndjson = tmp_path / "goal.ndjson"
    assert bb(["export", goal, "-o", str(ndjson)], cli_env).returncode == 0
    return goal, ndjson


def test_every_bad_path_is_one_line_naming_it(cli_env, tmp_path, demo_goal):
    goal, ndjson = demo_goal
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    missing = tmp_path / "missing" / "deeper" / "x"
    cases = [
        (["submit", "x", "--dag", str(tmp_path)], str(tmp_path)),
        (["submit", "x", "--dag", str(missing)], str(missing)),
        (["export", goal, "-o", str(missing)], str(missing)),
        (["export", goal, "-o", str(tmp_path)], str(tmp_path)),
        (["replay", goal, "--format", "html", "-o", str(tmp_path)], str(tmp_path)),
        (["replay", goal, "--from-file", str(ndjson), "-o", str(missing)], str(missing)),
        (["replay", goal, "--from-file", str(missing)], str(missing)),
        (["replay", goal, "--from-file", str(tmp_path)], str(tmp_path)),
        (["export-parquet", str(a_file)], str(a_file)),
        (["status", "--config", str(missing)], str(missing)),
        (["sql", "SELECT 1", "--db", str(a_file / "x.duckdb")], str(a_file)),
    ]
    for args, path in cases:
        r = bb(args, cli_env, timeout=60)
        assert r.returncode != 0, args
        assert "Traceback" not in r.stderr, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert path in lines[0] or path.split("/")[-1] in lines[0], (args, lines)


def test_unknown_goal_is_one_line_and_non_zero(cli_env, demo_goal):
    for args in (["cost", "01NOSUCHGOAL00000000000000"], ["cost", "no'such"]):
        r = bb(args, cli_env, timeout=60)
        assert r.returncode != 0, args
        assert len(r.stderr.strip().splitlines()) == 1
        assert "no goal" in r.stderr or "invalid goal id" in r.stderr


def test_replay_at_before_the_goal_says_so(cli_env):
    assert bb(["submit", "an earlier goal"], cli_env).returncode == 0
    r = bb(["demo", "--json"], cli_env, timeout=120)
    assert r.returncode == 0, r.stderr
    goal = json.loads(r.stdout)["goal_id"]
    r = bb(["replay", goal, "--at", "1"], cli_env)
    assert r.returncode != 0
    assert f"--at 1 is before goal {goal} began" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
