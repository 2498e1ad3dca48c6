"""DAG validation, settings and ids. Pure or local-only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blackboard import ids
from blackboard.engine import dag
from blackboard.engine.submission import resolve_limits
from blackboard.errors import ConfigError, InvalidDag
from blackboard.log.events import Limits, TaskSpec
from blackboard.runtime import config


def spec(tid: str, *deps: str) -> TaskSpec:
    return TaskSpec(task_id=tid, type="noop", lane="local", depends_on=deps)


def test_order_puts_dependencies_first():
    out = dag.order([spec("c", "b"), spec("b", "a"), spec("a")])
    assert [t.task_id for t in out] == ["a", "b", "c"]


def test_cycle_is_named():
    with pytest.raises(InvalidDag, match="dependency cycle: b -> c -> d -> b"):
        dag.order([spec("a", "b"), spec("b", "c"), spec("c", "d"), spec("d", "b")])


def test_self_dependency_is_a_cycle():
    with pytest.raises(InvalidDag, match="a -> a"):
        dag.order([spec("a", "a")])


def test_unknown_and_duplicate_ids():
    with pytest.raises(InvalidDag, match="unknown task 'zz'"):
        dag.order([spec("a", "zz")])
    with pytest.raises(InvalidDag, match="used twice"):
        dag.order([spec("a"), spec("a")])
    assert [t.task_id for t in dag.order([spec("b", "a")], existing={"a"})] == ["b"]


def test_long_chain_does_not_hit_recursion_limit():
    chain = [spec(f"t{i}", *([f"t{i - 1}"] if i else [])) for i in range(20_000)]
    assert len(dag.order(list(reversed(chain)))) == 20_000


@given(st.lists(st.lists(st.integers(0, 30), max_size=4), min_size=1, max_size=30))
def test_any_acyclic_graph_orders_with_deps_first(edges):
    # Edges only point to lower indexes, so the graph is acyclic by construction.
    specs = [
        spec(f"t{i}", *{f"t{d}" for d in deps if d < i}) for i, deps in enumerate(edges)
    ]
    out = dag.order(list(reversed(specs)))
    pos = {t.task_id: n for n, t in enumerate(out)}
    assert all(pos[d] < pos[t.task_id] for t in out for d in t.depends_on)


def test_settings_from_file_and_env(tmp_path):
    f = tmp_path / "bb.toml"
    f.write_text(
        '[nats]\nprefix = "acme"\n[limits]\nmax_tasks = 9\n'
        '[lanes.local]\nmodel = "llama3"\n'
    )
    s = config.load(
        f, env={"BB_LOCAL_BASE_URL": "http://gpu:8000/v1", "BB_SCRIPTED": "1"}
    )
    assert s.nats.prefix == "acme" and s.limits.max_tasks == 9
    assert s.lanes["local"].model == "llama3"
    assert s.lanes["local"].base_url == "http://gpu:8000/v1"
    assert s.scripted is True
    assert "frontier" in s.lanes  # defaults kept beside the file's lanes


def test_bad_settings_are_named(tmp_path):
    f = tmp_path / "bb.toml"
    f.write_text("[nats]\nurll = 'x'\n")
    with pytest.raises(ConfigError, match="urll"):
        config.load(f, env={})
    f.write_text("[nats\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(f, env={})
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml", env={})


@pytest.mark.parametrize("target", ["local", "gpu"])
def test_escalate_to_names_another_configured_lane(tmp_path, target):
    f = tmp_path / "bb.toml"
    f.write_text(f'[lanes.local]\nescalate_to = "{target}"\n')
    with pytest.raises(ConfigError, match=rf"\[lanes.local\] escalate_to = '{target}'"):
        config.load(f, env={})
    f.write_text('[lanes.local]\nescalate_to = "frontier"\nmax_tokens = 512\n')
    s = config.load(f, env={})
    assert (s.lanes["local"].escalate_to, s.lanes["local"].max_tokens) == ("frontier", 512)


def test_limit_overrides():
    base = Limits(max_depth=3, max_tasks=10)
    assert resolve_limits(base, {"max_tasks": 5, "max_depth": None}) == Limits(
        max_depth=3, max_tasks=5
    )
    with pytest.raises(ConfigError):
        resolve_limits(base, {"max_cost_usd": -1})


def test_ids_are_sortable_unique_subject_tokens():
    many = [ids.new_id() for _ in range(5000)]
    assert many == sorted(many) and len(set(many)) == 5000
    assert all(len(i) == 26 and "." not in i for i in many)
