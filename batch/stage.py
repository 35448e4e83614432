"""What every stage shares. A stage is one node of the stage graph (batch/graph.py) with one
interface, whatever it does and whoever runs it (the local executor or a SLURM job):

- ``pending(shards)``: ``{shard: why it is not done}``, empty when its output is current;
- ``run(shards, pool)``: do the shards that are not done, with a model from the engine pool;
  returns the figures of the work done in this call;
- ``figures()``: the work recorded in its outputs' manifests, whichever job did it;
- ``summary_line()``: what it skipped, truncated or could not parse, for the run summary.

A shard is done when its manifest names the stage's current identity: its settings and the
checksums of the upstream shards it read, so a redone upstream shard redoes exactly what read
it. ``ModelStage`` is the stage run by one model over ``num_shards`` shards of Parquet rows."""
from __future__ import annotations

import contextlib
import gc
import logging
import time
from pathlib import Path

import polars as pl

from mapd.local_teachers.registry import ModelSpec

from .config import RunConfig
from .shards import StaleShardError, read_manifest, read_stage, shard_path, why_not_done, write_shard

log = logging.getLogger(__name__)

# Engine counters recorded per shard in its manifest (engine.Usage's fields, as stage figures).
FIGURES = {"generations": "requests", "prompt_tokens": "prompt_tokens", "completion_tokens": "completion_tokens",
           "skipped_too_long": "skipped_too_long", "engine_seconds": "seconds"}
SUMMARY_COLUMNS = ("stage", "rows", "prompt_too_long", "hit_max_tokens", "empty", "parse_failures", "note")


class Stage:
    """A node of the graph. Subclasses set ``name`` (the kind of stage, also its command),
    ``part`` (which one of its kind: a teacher, a variant) and ``needs`` (the stages it reads)."""

    name = ""
    sharded = True           # one output per shard of the questions; False: one output for the run
    frees_engine = False     # the local executor closes the loaded model first (training needs the memory)

    def __init__(self, cfg: RunConfig, needs: list["Stage"], spec: ModelSpec | None, part: str | None = None):
        self.cfg = cfg
        self.needs = needs
        self.spec = spec      # the model it loads (a SLURM job's resources come from it)
        self.part = part

    @classmethod
    def build(cls, graph) -> list["Stage"]:
        """This kind's stages in a run's graph, reading the stages already in it."""
        raise NotImplementedError

    @property
    def key(self) -> str:
        """Its name in the graph, on the command line and in SLURM jobs: ``teach/<teacher>``."""
        return self.name if self.part is None else f"{self.name}/{self.part}"

    @property
    def num_shards(self) -> int:
        return self.cfg.num_shards if self.sharded else 1

    def shards(self, shards=None) -> list[int]:
        return list(range(self.num_shards)) if shards is None else list(shards)

    def reads(self, shard: int) -> list[tuple["Stage", int]]:
        """The upstream shards that ``shard`` reads: the same shard of a sharded stage, all of
        them for a stage that is not sharded, and the one output of an unsharded one."""
        return [(up, j) for up in self.needs
                for j in ([shard] if up.sharded and self.sharded else range(up.num_shards))]

    def waiting(self, shard: int) -> str | None:
        """Why ``shard`` cannot be current yet: an upstream shard it reads is not done."""
        for up, j in self.reads(shard):
            reason = up.pending([j]).get(j)
            if reason:
                where = f" shard {j}" if up.sharded else ""
                return f"waits for {up.key}{where} ({reason})"
        return None

    def inputs(self, shard: int) -> dict:
        """The checksums of the upstream outputs ``shard`` reads, from their manifests."""
        return {f"{up.key}/{path.name}": (read_manifest(path) or {}).get("sha256")
                for up, j in self.reads(shard) for path in up.outputs(j)}

    def check_inputs(self, shards) -> None:
        """Fail before the model loads (minutes for a large one) when an input is not done."""
        for i in shards:
            reason = self.waiting(i)
            if reason:
                raise StaleShardError(f"{self.key}{f' shard {i}' if self.sharded else ''}: {reason}; "
                                      "run that stage first")

    def outputs(self, shard: int) -> list[Path]:
        """The files of ``shard`` that carry manifests (what a downstream stage reads)."""
        raise NotImplementedError

    def pending(self, shards=None) -> dict[int, str]:
        raise NotImplementedError

    def run(self, shards=None, pool=None) -> dict:
        raise NotImplementedError

    def figures(self) -> dict:
        return {"stage": self.key}

    def outcome(self, figures: dict) -> str:
        """What the console shows after ``run``."""
        raise NotImplementedError

    def summary_line(self) -> dict:
        raise NotImplementedError


class WholeRunStage(Stage):
    """A stage with one output for the whole run, made by ``make()`` from every shard upstream.
    Subclasses implement ``stale()``: why their output is not current, or None."""

    sharded = False

    def stale(self) -> str | None:
        raise NotImplementedError

    def make(self) -> None:
        raise NotImplementedError

    def pending(self, shards=None) -> dict[int, str]:
        reason = self.waiting(0) or self.stale()
        return {0: reason} if reason and 0 in self.shards(shards) else {}

    def run(self, shards=None, pool=None) -> dict:
        t0 = time.perf_counter()
        reason = self.pending().get(0)
        log.info("%s: %s", self.key, f"to do ({reason})" if reason else "done, skipped")
        if reason:
            self.check_inputs([0])
            self.make()
        return {"stage": self.key, "shards_run": int(reason is not None), "wall_seconds": time.perf_counter() - t0}


def _usage(engine) -> dict:
    return {k: getattr(engine.usage, field) if engine else 0 for k, field in FIGURES.items()}


def cut_in_reasoning() -> pl.Expr:
    """A reasoning model's completion cut at max_tokens inside its thinking: no answer at all."""
    return ((pl.col("finish_reason") == "length") & (pl.col("completion").str.strip_chars() == "")
            & pl.col("reasoning").is_not_null())


@contextlib.contextmanager
def _long_lived_frozen():
    """What exists before a stage's shards run (modules, questions, upstream frames, the model)
    outlives them: the cyclic GC skips it instead of rescanning it at every full collection,
    which took a third of the bookkeeping of a 100k-question committee. Garbage made meanwhile
    is collected as usual; what was frozen is collectable again afterwards."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def completion_columns(completions: list, seeds: list[int]) -> dict[str, list]:
    """The columns every model stage writes of its completions, in request order (columns, not
    a dict per row: a large committee's review stage writes millions)."""
    return {
        "prompt": [c.prompt for c in completions], "completion": [c.text for c in completions],
        "reasoning": [c.reasoning for c in completions], "prompt_tokens": [c.prompt_tokens for c in completions],
        "completion_tokens": [c.completion_tokens for c in completions],
        "finish_reason": [c.finish_reason for c in completions], "seed": seeds,
    }


class ModelStage(Stage):
    """A stage run by one model over ``cfg.num_shards`` shards. Subclasses set ``schema`` and
    implement ``settings`` (what decides the output besides its inputs) and ``rows``."""

    schema: dict = {}

    def __init__(self, cfg: RunConfig, needs: list[Stage], spec: ModelSpec, folder: Path, part: str | None = None):
        super().__init__(cfg, needs, spec, part)
        self.stage_dir = folder

    def settings(self) -> dict:
        raise NotImplementedError

    def rows(self, shard: int, engine) -> dict[str, list]:
        """The shard's output: its ``schema``'s columns."""
        raise NotImplementedError

    def identity(self, shard: int) -> dict:
        return {**self.settings(), "inputs": self.inputs(shard)}

    def path(self, shard: int) -> Path:
        return shard_path(self.stage_dir, shard, self.cfg.num_shards)

    def outputs(self, shard: int) -> list[Path]:
        return [self.path(shard)]

    def pending(self, shards=None) -> dict[int, str]:
        reasons = {i: self.waiting(i) or why_not_done(self.path(i), self.identity(i)) for i in self.shards(shards)}
        return {i: reason for i, reason in reasons.items() if reason}

    def run(self, shards=None, pool=None) -> dict:
        """Run the given shards (all by default) that are not done, loading the model at most
        once; returns figures of the work done in this call."""
        shards = self.shards(shards)
        todo = self.pending(shards)
        for i in shards:
            log.info("%s shard %d/%d: %s", self.key, i, self.num_shards, todo.get(i, "done, skipped"))
        if todo:
            self.check_inputs(list(todo))
        if todo and pool is None:
            from mapd.local_teachers.pool import EnginePool
            pool = EnginePool()
        engine = pool.get(self.spec) if todo else None
        t0 = time.perf_counter()
        total = dict.fromkeys(FIGURES, 0)
        with _long_lived_frozen():
            for i in todo:
                before, t_shard = _usage(engine), time.perf_counter()
                columns = self.rows(i, engine)
                rows = pl.DataFrame({k: columns[k] for k in self.schema}, schema=self.schema)
                figures = {k: v - before[k] for k, v in _usage(engine).items()}
                # Wall time of the shard, of which the engine's is part: rendering, grading, writing.
                write_shard(rows, self.path(i), self.identity(i),
                            stage=self.key, shard=i, num_shards=self.num_shards, model=self.spec.name,
                            figures={**figures, "wall_seconds": time.perf_counter() - t_shard})
                total = {k: total[k] + figures[k] for k in FIGURES}
                log.info("%s shard %d/%d: %d rows written to %s", self.key, i, self.num_shards, rows.height, self.path(i))
        return {"stage": self.key, "shards_run": len(todo), **total, "wall_seconds": time.perf_counter() - t0}

    def outcome(self, figures: dict) -> str:
        rate = figures["completion_tokens"] / figures["engine_seconds"] if figures["engine_seconds"] else 0.0
        outside = 1 - figures["engine_seconds"] / figures["wall_seconds"] if figures["wall_seconds"] else 0.0
        return (f"{figures['stage']}: {figures['shards_run']} shard(s) run, {figures['generations']} generations, "
                f"{figures['completion_tokens']} tokens in {figures['engine_seconds']:.1f} s ({rate:.1f} tok/s), "
                f"{outside:.1%} of {figures['wall_seconds']:.1f} s outside the engine")

    def figures(self) -> dict:
        """The work recorded in the manifests of all shards written so far, whichever job ran them."""
        total = dict.fromkeys((*FIGURES, "wall_seconds"), 0)
        for i in range(self.num_shards):
            recorded = (read_manifest(self.path(i)) or {}).get("figures", {})
            total = {k: total[k] + recorded.get(k, 0) for k in total}
        return {"stage": self.key, **total}

    def shard_frame(self, shard: int) -> pl.DataFrame:
        """One finished shard, for the stage downstream; refuses a missing or stale one."""
        reason = self.pending([shard]).get(shard)
        if reason:
            raise StaleShardError(f"{self.path(shard)}: {reason}; run the {self.key} stage first")
        return self._conform(pl.read_parquet(self.path(shard)))

    def results(self) -> pl.DataFrame:
        return self._conform(read_stage(self.stage_dir, self.num_shards, self.identity))

    def _conform(self, df: pl.DataFrame) -> pl.DataFrame:
        """Shards written before a column of the schema existed (``reasoning``) stay done: they
        read with it null."""
        return df.with_columns(pl.lit(None, dtype).alias(c) for c, dtype in self.schema.items() if c not in df.columns)

    def summary_line(self) -> dict:
        """Counts over the rows. A parse failure is an answer the grader could not read (exam,
        teach, eval) or a review without a usable score."""
        df = self.results()
        generated = df.filter(pl.col("finish_reason") != "prompt_too_long")
        if "score_status" in df.columns:
            failures = int((df["score_status"] != "ok").sum())
        else:
            failures = int((df["verdict"] == "unparseable").sum())
        # Cut inside the thinking: counted as hit max tokens, not as empty, and named in the note.
        cut = int(df.select(cut_in_reasoning().sum()).item())
        return {
            "stage": self.key, "rows": df.height,
            "prompt_too_long": df.height - generated.height,
            "hit_max_tokens": int((df["finish_reason"] == "length").sum()),
            "empty": int((generated["completion"].str.strip_chars() == "").sum()) - cut,
            "parse_failures": failures, "note": f"{cut} cut inside the reasoning" if cut else "",
        }
