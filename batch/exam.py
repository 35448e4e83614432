"""EXAM: the student answers every question of the train split; every answer is graded and kept,
so the next stage can pick the mistakes."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import polars as pl

from local_teachers.engine import Request, load_engine
from local_teachers.registry import load_spec

from .config import RunConfig, request_seed, shard_slice
from .prompts import load_prompt
from .shards import read_stage, shard_path, why_not_done, write_shard
from .tasks import Verdict, get_task

log = logging.getLogger(__name__)

STAGE = "exam"
SCHEMA = {
    "question_id": pl.String,
    "question": pl.String,
    "gold": pl.String,
    "prompt": pl.String,
    "completion": pl.String,
    "answer": pl.String,
    "verdict": pl.String,
    "prompt_tokens": pl.Int32,
    "completion_tokens": pl.Int32,
    "finish_reason": pl.String,
    "seed": pl.Int64,
}


class Exam:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.task = get_task(cfg.task)
        self.spec = load_spec(cfg.student).with_engine(cfg.engine)
        self.prompt = load_prompt("student_answer", self.task.family)
        self.stage_dir = Path(cfg.run_dir) / STAGE
        self.identity = {
            "stage": STAGE,
            "task": cfg.task,
            "data": cfg.data,
            "limit": cfg.limit,
            "seed": cfg.seed,
            "num_shards": cfg.num_shards,
            "model": self.spec.name,
            "model_identity": self.spec.identity(),
            "prompt_sha256": self.prompt.sha256,
        }
        self._questions = None

    @property
    def questions(self):
        if self._questions is None:
            questions = self.task.load("train", self.cfg.data)
            self._questions = questions[: self.cfg.limit] if self.cfg.limit else questions
        return self._questions

    def pending(self, shards) -> dict[int, str]:
        """Shards that are not done, each with the reason."""
        reasons = {i: why_not_done(shard_path(self.stage_dir, i, self.cfg.num_shards), self.identity) for i in shards}
        return {i: reason for i, reason in reasons.items() if reason}

    def run(self, shards=None, engine=None) -> dict:
        """Run the given shards (all by default) that are not done; returns throughput figures
        of the work done in this call."""
        shards = range(self.cfg.num_shards) if shards is None else shards
        todo = self.pending(shards)
        for i in shards:
            log.info("exam shard %d/%d: %s", i, self.cfg.num_shards, todo.get(i, "done, skipped"))
        if todo and engine is None:
            engine = load_engine(self.spec)   # loaded once for all of this call's shards
        t0 = time.perf_counter()
        for i in todo:
            self.run_shard(i, engine)
        wall = time.perf_counter() - t0
        usage = engine.usage if engine else None
        return {
            "shards_run": len(todo),
            "completion_tokens": usage.completion_tokens if usage else 0,
            "engine_seconds": usage.seconds if usage else 0.0,
            "wall_seconds": wall,
        }

    def run_shard(self, shard: int, engine) -> Path:
        questions = shard_slice(self.questions, shard, self.cfg.num_shards)
        requests = [
            Request(
                id=q.id,
                messages=(("user", self.prompt.render(question=q.text)),),
                sampling=self.spec.sampling,
                seed=request_seed(self.cfg.seed, STAGE, q.id),
            )
            for q in questions
        ]
        completions = engine.generate(requests)
        rows = []
        for q, r, c in zip(questions, requests, completions):
            graded = self.task.grade(c.text, q)
            rows.append({
                "question_id": q.id,
                "question": q.text,
                "gold": q.gold,
                "prompt": c.prompt,
                "completion": c.text,
                "answer": graded.answer,
                "verdict": graded.verdict.value,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "finish_reason": c.finish_reason,
                "seed": r.seed,
            })
        path = shard_path(self.stage_dir, shard, self.cfg.num_shards)
        write_shard(pl.DataFrame(rows, schema=SCHEMA), path, self.identity,
                    stage=STAGE, shard=shard, num_shards=self.cfg.num_shards,
                    model=self.spec.name, prompt_sha256=self.prompt.sha256)
        log.info("exam shard %d/%d: %d answers written to %s", shard, self.cfg.num_shards, len(rows), path)
        return path

    def results(self) -> pl.DataFrame:
        return read_stage(self.stage_dir, self.cfg.num_shards, self.identity)

    def summary(self) -> dict:
        df = self.results()
        counts = {v.value: int((df["verdict"] == v.value).sum()) for v in Verdict}
        summary = {
            "task": self.cfg.task,
            "questions": df.height,
            "accuracy": counts["correct"] / df.height if df.height else 0.0,
            "correct": counts["correct"],
            "mistakes": counts["wrong"],
            "unparseable": counts["unparseable"],
            "prompt_too_long": int((df["finish_reason"] == "prompt_too_long").sum()),
            "hit_max_tokens": int((df["finish_reason"] == "length").sum()),
            "completion_tokens": int(df["completion_tokens"].sum()),
        }
        (self.stage_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

