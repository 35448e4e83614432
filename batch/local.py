"""The local executor: every stage of the graph in order, every shard, in this process, each
model loaded once (the SLURM executor runs the same stages, one shard per array task)."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from mapd.local_teachers.pool import EnginePool

from .eval import results_table
from .graph import Graph
from .stage import ModelStage, Stage
from .together import run_together

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
        for batch in _batches(graph.stages[:last + 1]):
            if batch[0].frees_engine:
                pool.close()
            for stage, ran in zip(batch, run_together(batch, pool) if len(batch) > 1 else [batch[0].run(pool=pool)]):
                figures[stage.key] = ran
                done(stage, ran)
    finally:
        if own:
            pool.close()
    log.info("models loaded in this run: %d", pool.loads)
    return [figures[stage.key] for stage in graph.stages[:last + 1]]


def _batches(stages: list[Stage]) -> list[list[Stage]]:
    """The stages in the order they run, in batches. Those needing nothing run first: the base
    eval answers on the exam's engine, with the exam, instead of loading the student again after
    training. Then the rest in graph order; consecutive model stages on the same weights, none
    needing another, run as one batch (batch/together.py): a committee that is one model several
    ways teaches, and reviews, in one engine call."""
    batches: list[list[Stage]] = []
    keys: list[tuple | None] = []
    for stage in [s for s in stages if not s.needs] + [s for s in stages if s.needs]:
        key = stage.engine_key() if isinstance(stage, ModelStage) else None
        if key is not None and keys and keys[-1] == key and not set(stage.needs) & set(batches[-1]):
            batches[-1].append(stage)
        else:
            batches.append([stage])
            keys.append(key)
    return batches


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
