"""Stages on one loaded model run as one batch: the same shards as one at a time, in fewer engine
calls, and a failing stage fails the run without leaving the others waiting. (The real engine
runs batched in every pipeline test: test_pipeline, test_offline.)"""
from __future__ import annotations

import threading

import pytest
from fakes import ScriptedEngine, ScriptedPool
from test_pipeline import _committee_scripts

from mapd.batch.config import RunConfig
from mapd.batch.graph import Graph
from mapd.batch.local import _batches, run_local


@pytest.fixture
def cfg(tmp_path):
    return RunConfig(task="svamp", run_dir=tmp_path / "run", limit=6, num_shards=2)


def _scripts(graph):
    return _committee_scripts({q.text: q.gold for q in graph.one("exam").questions})


def test_the_demo_committee_runs_in_batches_of_stages_on_the_same_weights(cfg):
    keys = [[s.key for s in batch] for batch in _batches(Graph(cfg).stages)]
    teachers = [f"demo-teacher-{x}" for x in "abc"]
    assert keys == [["exam", "eval/base"], [f"teach/{t}" for t in teachers], [f"review/{t}" for t in teachers],
                    ["dataset"], ["train"], ["eval/distilled"]]


def test_batched_stages_write_what_they_write_one_at_a_time_in_fewer_engine_calls(cfg, tmp_path):
    together = Graph(cfg)
    scripts = _scripts(together)
    figures = run_local(together, ScriptedPool(scripts), through="dataset")
    alone = Graph(RunConfig(task="svamp", run_dir=tmp_path / "alone", limit=6, num_shards=2))
    alone_scripts = _scripts(alone)
    upto = alone.stages.index(alone.one("dataset"))
    alone_figures = [s.run(pool=ScriptedPool(alone_scripts)) for s in alone.stages[:upto + 1]]
    for a, b in zip(together.stages[:upto], alone.stages[:upto]):       # exam, teach, review
        assert a.results().equals(b.results()), a.key
    assert together.one("dataset").stats() == alone.one("dataset").stats()
    counted = ("generations", "prompt_tokens", "completion_tokens", "skipped_too_long")
    assert [{k: f.get(k) for k in counted} for f in figures] == [{k: f.get(k) for k in counted} for f in alone_figures]
    # Each teacher is its own scripted engine: one call per shard each, teaching and reviewing.
    assert {n: e.calls for n, e in scripts.items()} == {n: e.calls for n, e in alone_scripts.items()}

    # On one engine (as three entries on shared weights are), the three teach (review) stages
    # make one call per shard between them.
    shared = ScriptedEngine(lambda request, adapter: "The answer is 7. [4]")
    ran = run_local(Graph(RunConfig(task="svamp", run_dir=tmp_path / "shared", limit=6, num_shards=2)),
                    ScriptedPool(shared), through="dataset")
    assert shared.calls == 2 + 2 + 2          # exam, teach, review: a call per shard
    # The engine's time is shared out among the stages that asked it, none lost or counted twice.
    assert sum(f.get("engine_seconds", 0) for f in ran) == pytest.approx(shared.usage.seconds)
    assert sum(f.get("generations", 0) for f in ran) == shared.usage.requests


def test_a_failing_stage_fails_the_run_and_leaves_no_stage_waiting(cfg, monkeypatch):
    graph = Graph(cfg)
    scripts = _scripts(graph)
    run_local(graph, ScriptedPool(scripts), through="exam")

    def broken(shard, engine):
        raise RuntimeError("teacher b broke")
    monkeypatch.setattr(graph["teach/demo-teacher-b"], "rows", broken)
    result = {}
    worker = threading.Thread(target=lambda: result.update(error=_error(lambda: run_local(
        graph, ScriptedPool(scripts), through="teach"))), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "a stage was left waiting for the others"
    assert str(result["error"]) == "teacher b broke"
    assert not graph["teach/demo-teacher-a"].pending() and not graph["teach/demo-teacher-c"].pending()

    # An engine that fails fails every stage that asked it, and the run.
    def failing(request, adapter):
        raise OSError("engine gone")
    graph2 = Graph(RunConfig(task="svamp", run_dir=cfg.run_dir.parent / "failing", limit=6, num_shards=2))
    with pytest.raises(OSError, match="engine gone"):
        run_local(graph2, ScriptedPool(ScriptedEngine(failing)), through="teach")


def _error(fn):
    try:
        fn()
    except Exception as e:          # noqa: BLE001: the test reads it
        return e
    return None
