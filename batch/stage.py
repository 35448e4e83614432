"""What every model stage shares: shards, the identity that decides whether a shard is done,
one engine per job, and the throughput figures of the work done."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import polars as pl

from local_teachers.engine import EnginePool
from local_teachers.registry import ModelSpec

from .config import RunConfig
from .shards import StaleShardError, fingerprint, read_manifest, read_stage, shard_path, why_not_done, write_shard

log = logging.getLogger(__name__)

# Engine counters recorded per shard in its manifest (engine.Usage's fields, as stage figures).
FIGURES = {"generations": "requests", "prompt_tokens": "prompt_tokens", "completion_tokens": "completion_tokens",
           "skipped_too_long": "skipped_too_long", "engine_seconds": "seconds"}


def _usage(engine) -> dict:
    return {k: getattr(engine.usage, field) if engine else 0 for k, field in FIGURES.items()}


class Stage:
    """A stage run by one model over ``cfg.num_shards`` shards. Subclasses set ``name`` and
    ``schema`` and implement ``identity`` and ``rows(shard, engine)``."""

    name = ""
    schema: dict = {}

    def __init__(self, cfg: RunConfig, spec: ModelSpec, folder: Path):
        self.cfg = cfg
        self.spec = spec
        self.stage_dir = folder
        self.label = f"{self.name} {spec.name}"

    def identity(self) -> dict:
        raise NotImplementedError

    def rows(self, shard: int, engine) -> list[dict]:
        raise NotImplementedError

    def upstream(self) -> list["Stage"]:
        """The stages whose shards this one reads."""
        return []

    def check_inputs(self, shards) -> None:
        """Fail before the model loads (minutes for a large one) when an input is missing,
        stale or malformed."""
        for stage in self.upstream():
            for i in shards:
                stage.shard_frame(i)

    def fingerprint(self) -> str:
        return fingerprint(self.identity())

    def path(self, shard: int) -> Path:
        return shard_path(self.stage_dir, shard, self.cfg.num_shards)

    def pending(self, shards=None) -> dict[int, str]:
        """Shards not done, each with the reason."""
        shards = range(self.cfg.num_shards) if shards is None else shards
        identity = self.identity()
        reasons = {i: why_not_done(self.path(i), identity) for i in shards}
        return {i: reason for i, reason in reasons.items() if reason}

    def run(self, shards=None, pool: EnginePool | None = None) -> dict:
        """Run the given shards (all by default) that are not done, loading the model at most
        once; returns figures of the work done in this call."""
        shards = list(range(self.cfg.num_shards) if shards is None else shards)
        todo = self.pending(shards)
        for i in shards:
            log.info("%s shard %d/%d: %s", self.label, i, self.cfg.num_shards, todo.get(i, "done, skipped"))
        if todo:
            self.check_inputs(list(todo))
        pool = pool or EnginePool()
        engine = pool.get(self.spec) if todo else None
        t0 = time.perf_counter()
        identity = self.identity()
        total = dict.fromkeys(FIGURES, 0)
        for i in todo:
            before, t_shard = _usage(engine), time.perf_counter()
            rows = self.rows(i, engine)
            figures = {k: v - before[k] for k, v in _usage(engine).items()}
            # Time of the shard that is not the engine's, e.g. rendering, grading, writing.
            write_shard(pl.DataFrame(rows, schema=self.schema), self.path(i), identity,
                        stage=self.name, shard=i, num_shards=self.cfg.num_shards, model=self.spec.name,
                        figures={**figures, "wall_seconds": time.perf_counter() - t_shard})
            total = {k: total[k] + figures[k] for k in FIGURES}
            log.info("%s shard %d/%d: %d rows written to %s", self.label, i, self.cfg.num_shards, len(rows), self.path(i))
        return {"stage": self.label, "shards_run": len(todo), **total, "wall_seconds": time.perf_counter() - t0}

    def figures(self) -> dict:
        """The work recorded in the manifests of all shards written so far, whichever job ran them."""
        total = dict.fromkeys((*FIGURES, "wall_seconds"), 0)
        for i in range(self.cfg.num_shards):
            recorded = (read_manifest(self.path(i)) or {}).get("figures", {})
            total = {k: total[k] + recorded.get(k, 0) for k in total}
        return {"stage": self.label, **total}

    def shard_frame(self, shard: int) -> pl.DataFrame:
        """One finished shard, for the stage downstream; refuses a missing or stale one."""
        reason = why_not_done(self.path(shard), self.identity())
        if reason:
            raise StaleShardError(f"{self.path(shard)}: {reason}; run the {self.label} stage first")
        return pl.read_parquet(self.path(shard))

    def results(self) -> pl.DataFrame:
        return read_stage(self.stage_dir, self.cfg.num_shards, self.identity())
