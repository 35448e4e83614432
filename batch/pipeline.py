"""All stages of one run, built from its configuration, and the local executor that runs them
in order in one process (the SLURM executor runs the same stage objects, one shard per task)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from local_teachers.engine import EnginePool

from .committee import policy_from
from .config import RunConfig
from .dataset import Dataset
from .evaluate import Eval, results_table
from .exam import Exam
from .finetune import Train
from .review import Review
from .teach import Teach

log = logging.getLogger(__name__)


class Pipeline:
    """One round of distillation; ``rounds`` chains several."""

    def __init__(self, cfg: RunConfig, round_: int = 1, eval_base: Eval | None = None):
        if len(set(cfg.teachers)) != len(cfg.teachers) or not cfg.teachers:
            raise ValueError(f"the committee must name one or more distinct teachers, got {list(cfg.teachers)}")
        self.cfg = cfg
        self.round = round_
        self.exam = Exam(cfg)
        self.teaches = [Teach(self.exam, t) for t in cfg.teachers]
        review_feedback = policy_from(cfg.policy, dict(cfg.policy_overrides)).review_feedback
        # One teacher: the paper's single-teacher ablation, without peer review.
        self.reviews = [Review(t, self.teaches, review_feedback) for t in self.teaches] if len(self.teaches) > 1 else []
        self.dataset = Dataset(self.teaches, self.reviews)
        self.train = Train(self.dataset)
        self.eval_base = eval_base or Eval(cfg, "base")

    def eval_distilled(self) -> Eval:
        """Built once the adapter exists: its checksum is part of the stage's identity."""
        if not (self.train.adapter / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"no adapter at {self.train.adapter}; run the train stage first")
        return Eval(self.cfg, "distilled", self.train.adapter)

    def model_stages(self):
        return [self.exam, *self.teaches, *self.reviews]

    def run_local(self, pool: EnginePool | None = None, through: str = "eval") -> list[dict]:
        """Every stage, every shard, in order, up to and including ``through`` (dataset, train
        or eval); returns the figures of each model stage. A pool passed in stays open for the
        caller, except that its engine is closed before training, which needs the memory."""
        own = pool is None
        pool = pool or EnginePool()
        try:
            figures = [stage.run(pool=pool) for stage in self.model_stages()]
            self.dataset.run()
            if through in ("train", "eval"):
                pool.close()           # training needs the memory the engine holds
                self.train.run()
            if through == "eval":
                figures += [stage.run(pool=pool) for stage in (self.eval_base, self.eval_distilled())]
        finally:
            if own:
                pool.close()
        log.info("models loaded in this run: %d", pool.loads)
        return figures

    def plan(self) -> list[tuple[str, str | None]]:
        """Each stage with the reason it will run, or None when its output is done and current."""
        steps = [(s.label, _shards_reason(s.pending(), self.cfg.num_shards)) for s in self.model_stages()]
        steps += [("dataset", self.dataset.pending()), ("train", self.train.pending()),
                  (self.eval_base.label, _shards_reason(self.eval_base.pending(), self.cfg.num_shards))]
        trained = self.train.pending() is None
        steps.append(("eval distilled", _shards_reason(self.eval_distilled().pending(), self.cfg.num_shards)
                      if trained else "its adapter is not trained yet"))
        return steps

    def results(self) -> dict:
        return results_table(self.eval_base, self.eval_distilled(), self.round)


def _shards_reason(pending: dict[int, str], num_shards: int) -> str | None:
    """``{shard: reason}`` as one line: how many shards for each reason."""
    by_reason: dict[str, list[int]] = {}
    for shard, reason in pending.items():
        by_reason.setdefault(reason, []).append(shard)
    return "; ".join(f"{len(shards)}/{num_shards} shards {reason}" for reason, shards in by_reason.items()) or None


def format_plan(steps: list[tuple[str, str | None]]) -> str:
    return "\n".join(f"  {label}: {'to do, ' + reason if reason else 'done, kept'}" for label, reason in steps)


def rounds(first: Pipeline, n: int) -> list[Pipeline]:
    """Round 1 in the run directory, round r in <run>/round-r: the student takes the exam with
    round r-1's adapter, the committee teaches from its new mistakes, and training continues
    from that adapter. The base student is evaluated once, in round 1."""
    pipelines = [first]
    for r in range(2, n + 1):
        cfg = dataclasses.replace(first.cfg, run_dir=Path(first.cfg.run_dir) / f"round-{r}",
                                  init_adapter=str(pipelines[-1].train.adapter))
        cfg.save()
        pipelines.append(Pipeline(cfg, r, eval_base=first.eval_base))
    return pipelines
