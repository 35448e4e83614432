"""All stages of one run, built from its configuration, and the local executor that runs them
in order in one process (the SLURM executor runs the same stage objects, one shard per task)."""
from __future__ import annotations

import logging

from local_teachers.engine import EnginePool

from .committee import policy_from
from .config import RunConfig
from .dataset import Dataset
from .exam import Exam
from .review import Review
from .teach import Teach

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, cfg: RunConfig):
        if len(set(cfg.teachers)) != len(cfg.teachers) or not cfg.teachers:
            raise ValueError(f"the committee must name one or more distinct teachers, got {list(cfg.teachers)}")
        self.cfg = cfg
        self.exam = Exam(cfg)
        self.teaches = [Teach(self.exam, t) for t in cfg.teachers]
        review_feedback = policy_from(cfg.policy, dict(cfg.policy_overrides)).review_feedback
        # One teacher: the paper's single-teacher ablation, without peer review.
        self.reviews = [Review(t, self.teaches, review_feedback) for t in self.teaches] if len(self.teaches) > 1 else []
        self.dataset = Dataset(self.teaches, self.reviews)

    def model_stages(self):
        return [self.exam, *self.teaches, *self.reviews]

    def run_local(self, pool: EnginePool | None = None) -> list[dict]:
        """Every model stage, every shard, in order; returns the figures of each. A pool passed
        in stays open for the caller."""
        own = pool is None
        pool = pool or EnginePool()
        try:
            figures = [stage.run(pool=pool) for stage in self.model_stages()]
        finally:
            if own:
                pool.close()
        log.info("models loaded in this run: %d", pool.loads)
        return figures
