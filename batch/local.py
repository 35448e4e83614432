"""The local executor: every stage of the graph in order, every shard, in this process, each
model loaded once (the SLURM executor runs the same stages, one shard per array task)."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from mapd.local_teachers.pool import EnginePool

from .eval import results_table
from .graph import Graph
from .stage import Stage

log = logging.getLogger(__name__)


def run_local(graph: Graph, pool: EnginePool | None = None, through: str | None = None,
              done: Callable[[Stage, dict], None] = lambda stage, figures: None) -> list[dict]:
    """Run every stage up to and including the last of kind ``through`` (all by default);
    ``done(stage, figures)`` is called after each. Returns the figures of each stage. A pool
    passed in stays open for the caller, except that it is closed before a stage that needs
    the memory its engine holds (training)."""
    last = max(i for i, s in enumerate(graph.stages) if through is None or s.name == through)
    own = pool is None
    pool = pool or EnginePool()
    figures = {}
    try:
        for stage in _engine_order(graph.stages[:last + 1]):
            if stage.frees_engine:
                pool.close()
            figures[stage.key] = stage.run(pool=pool)
            done(stage, figures[stage.key])
    finally:
        if own:
            pool.close()
    log.info("models loaded in this run: %d", pool.loads)
    return [figures[stage.key] for stage in graph.stages[:last + 1]]


def _engine_order(stages: list[Stage]) -> list[Stage]:
    """The stages in graph order, except that those needing nothing run before the first stage
    that frees the engine: the base eval answers on the exam's engine, still loaded, instead of
    loading the student again after training."""
    free = next((i for i, s in enumerate(stages) if s.frees_engine), len(stages))
    later = stages[free:]
    return stages[:free] + [s for s in later if not s.needs] + [s for s in later if s.needs]


def rounds(first: Graph, n: int) -> list[Graph]:
    """Round 1 in the run directory, round r in <run>/round-r: the student takes the exam with
    round r-1's adapter, the committee teaches from its new mistakes, and training continues
    from that adapter. The base student is evaluated once, in round 1."""
    graphs = [first]
    for r in range(2, n + 1):
        later = dataclasses.replace(first.cfg, run_dir=first.cfg.run_dir / f"round-{r}",
                                    init_adapter=str(graphs[-1].one("train").adapter))
        later.save()
        graphs.append(Graph(later))
    return graphs


def results(graphs: list[Graph]) -> list[dict]:
    """The results table of each round (written into its eval folder), against round 1's base."""
    base = graphs[0]["eval/base"]
    return [results_table(base, g["eval/distilled"], r) for r, g in enumerate(graphs, start=1)]
