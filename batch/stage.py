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
from .shards import StaleShardError, fingerprint, read_stage, shard_path, why_not_done, write_shard

log = logging.getLogger(__name__)


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
        pool = pool or EnginePool()
        engine = pool.get(self.spec) if todo else None
        before = (engine.usage.requests, engine.usage.completion_tokens, engine.usage.seconds) if engine else (0, 0, 0.0)
        t0 = time.perf_counter()
        identity = self.identity()
        for i in todo:
            rows = self.rows(i, engine)
            write_shard(pl.DataFrame(rows, schema=self.schema), self.path(i), identity,
                        stage=self.name, shard=i, num_shards=self.cfg.num_shards, model=self.spec.name)
            log.info("%s shard %d/%d: %d rows written to %s", self.label, i, self.cfg.num_shards, len(rows), self.path(i))
        after = (engine.usage.requests, engine.usage.completion_tokens, engine.usage.seconds) if engine else before
        return {
            "stage": self.label,
            "shards_run": len(todo),
            "generations": after[0] - before[0],
            "completion_tokens": after[1] - before[1],
            "engine_seconds": after[2] - before[2],
            "wall_seconds": time.perf_counter() - t0,
        }

    def shard_frame(self, shard: int) -> pl.DataFrame:
        """One finished shard, for the stage downstream; refuses a missing or stale one."""
        reason = why_not_done(self.path(shard), self.identity())
        if reason:
            raise StaleShardError(f"{self.path(shard)}: {reason}; run the {self.label} stage first")
        return pl.read_parquet(self.path(shard))

    def results(self) -> pl.DataFrame:
        return read_stage(self.stage_dir, self.cfg.num_shards, self.identity())
