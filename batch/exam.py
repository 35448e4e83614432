"""EXAM: the student answers every question of the train split; every answer is graded and kept,
so the next stage can pick the mistakes. ``StudentAnswers`` is what EXAM and EVAL share: the
student answering a split, graded by the task's grader."""
from __future__ import annotations

import dataclasses
import json
from functools import cached_property, partial
from pathlib import Path

import polars as pl

from mapd.local_teachers.engine import Request
from mapd.local_teachers.pool import EnginePool, MadeOnLoad
from mapd.local_teachers.registry import ModelSpec, load_spec
from mapd.local_teachers.vllm_engine import max_lora_rank
from mapd.training.config import TrainConfig
from mapd.training.merge import adapter_checksums, merge_adapter

from .config import RunConfig, request_seeds, shard_slice
from .prompts import load_prompt
from .shards import atomic_write
from .stage import ModelStage, Stage, completion_columns
from .tasks import Verdict, get_task

SCHEMA = {
    "question_id": pl.String,
    "question": pl.String,
    "gold": pl.String,
    "prompt": pl.String,
    "completion": pl.String,
    "reasoning": pl.String,         # a reasoning model's thinking before the completion; null for others
    "answer": pl.String,
    "verdict": pl.String,
    "prompt_tokens": pl.Int32,
    "completion_tokens": pl.Int32,
    "finish_reason": pl.String,
    "seed": pl.Int64,
    "sample": pl.Int16,             # which of the question's answers (eval with sampling: 0..k-1; else 0)
}


def merged_copy(run_dir: Path) -> Path:
    """Where a run's adapter is merged into a copy of the base weights for answering on CPU (made
    when an engine first loads it): by its distilled eval, and by the next round's exam."""
    return Path(run_dir) / "eval" / "merged-model"


class StudentAnswers(ModelStage):
    """The student answers ``split``, with ``adapter`` (a peft LoRA folder) when one is given:
    on GPUs through the engine's LoRA path; on CPU, where that path runs at a third of the plain
    engine's speed, on the adapter merged into a copy of the base in the folder ``merged``
    (``merged_copy`` of the run that trained it). Subclasses set ``name`` and ``split``."""

    schema = SCHEMA
    split = "train"
    samples = 1      # answers per question

    def __init__(self, cfg: RunConfig, needs: list[Stage], spec: ModelSpec, folder: Path, part: str | None = None,
                 adapter: str | None = None, merged: Path | None = None):
        merged = merged if adapter and spec.gpus == 0 else None
        # ``spec`` stays the student's: the model a SLURM job is sized for and checks before it starts.
        super().__init__(cfg, needs, with_lora(spec, cfg.lora_r) if adapter and merged is None else spec, folder, part)
        self.adapter = adapter
        self.merged = None if merged is None else MadeOnLoad.of(
            spec, str(merged), adapter, partial(merge_adapter, spec.path, adapter, merged, spec.dtype))
        self.task = get_task(cfg.task)
        self.prompt = load_prompt("student_answer", self.task.family)

    def settings(self) -> dict:
        cfg = self.cfg
        adapter = {"adapter_sha256": None} if self.adapter is None else {
            **adapter_checksums(self.adapter), "adapter_applied": "lora" if self.merged is None else "merged"}
        return {
            "stage": self.name, "task": cfg.task, "split": self.split, "data": cfg.split_source(self.split)[0],
            "limit": cfg.split_limit(self.split),
            "seed": cfg.seed, "num_shards": cfg.num_shards, "model": self.spec.name,
            "model_identity": self.spec.identity(), "prompt_sha256": self.prompt.sha256, **adapter,
            "samples": self.samples,
        }

    def run(self, shards=None, pool=None) -> dict:
        if self.merged is not None:
            pool = _Merged(pool or EnginePool(), self.merged)
        return super().run(shards, pool)

    def check_inputs(self, shards) -> None:
        super().check_inputs(shards)
        self.questions

    def load_split(self, split: str):
        """Every question of ``split`` from the run's data for it, before any limit."""
        source, shared = self.cfg.split_source(split)
        return self.task.load(split, source, shared)

    @cached_property
    def split_questions(self):
        """Every question of the split, before its limit."""
        return self.load_split(self.split)

    @cached_property
    def questions(self):
        limit = self.cfg.split_limit(self.split)
        return self.split_questions[:limit] if limit else self.split_questions

    def rows(self, shard: int, engine) -> dict[str, list]:
        asked = [(q, k) for q in shard_slice(self.questions, shard, self.cfg.num_shards) for k in range(self.samples)]
        # The first answer is named and seeded as a single answer always has been.
        seeds = request_seeds(self.cfg.seed, (self.name,), ((q.id, str(k)) if k else (q.id,) for q, k in asked))
        requests = [Request(f"{q.id}#{k}" if k else q.id, (("user", self.prompt.render(question=q.text)),),
                            self.spec.sampling, seed) for (q, k), seed in zip(asked, seeds)]
        completions = engine.generate(requests, adapter=self.adapter)
        graded = [self.task.grade(c.text, q) for (q, _), c in zip(asked, completions)]
        return {
            "question_id": [q.id for q, _ in asked], "question": [q.text for q, _ in asked],
            "gold": [q.gold for q, _ in asked], **completion_columns(completions, seeds),
            "answer": [g.answer for g in graded], "verdict": [g.verdict.value for g in graded],
            "sample": [k for _, k in asked],
        }

    def summary(self) -> dict:
        """Counts of the finished stage, also written to summary.json beside its shards."""
        df = self.results()
        counts = {v.value: int((df["verdict"] == v.value).sum()) for v in Verdict}
        # With several answers per question: the accuracy of each round of answers, then their mean and spread.
        per_sample = df.group_by("sample").agg((pl.col("verdict") == Verdict.CORRECT.value).mean())["verdict"]
        summary = {
            "task": self.cfg.task,
            "split": self.split,
            "questions": df["question_id"].n_unique(),
            "samples": self.samples,
            "accuracy": float(per_sample.mean()) if df.height else 0.0,   # correct / answers
            "accuracy_std": float(per_sample.std()) if per_sample.len() > 1 else 0.0,
            "correct": counts["correct"],
            "mistakes": counts["wrong"],
            "unparseable": counts["unparseable"],
            "prompt_too_long": int((df["finish_reason"] == "prompt_too_long").sum()),
            "hit_max_tokens": int((df["finish_reason"] == "length").sum()),
            "completion_tokens": int(df["completion_tokens"].sum()),
        }
        atomic_write(self.stage_dir / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
        return summary

    def outcome(self, figures: dict) -> str:
        line = super().outcome(figures)
        if self.pending():
            return line
        s = self.summary()
        return (f"{line}\n{self.key} {s['task']}: {s['questions']} questions | accuracy "
                f"{s['accuracy']:.1%} ({s['correct']}) | mistakes {s['mistakes']} | unparseable {s['unparseable']} | "
                f"hit max tokens {s['hit_max_tokens']}")


def with_lora(spec: ModelSpec, lora_r: int = TrainConfig.lora_r) -> ModelSpec:
    """The student's spec with LoRA requests enabled, for answering with adapters of rank ``lora_r``."""
    return dataclasses.replace(spec, vllm={**spec.vllm, "enable_lora": True, "max_lora_rank": max_lora_rank(lora_r)})


class _Merged:
    """The engine pool as a stage that answers with a merged adapter sees it: asked for the
    student, it hands out the merged model (under the student's name)."""

    def __init__(self, pool, spec: MadeOnLoad):
        self.pool, self.spec = pool, spec

    def get(self, spec: ModelSpec):
        return self.pool.get(self.spec)


class Exam(StudentAnswers):
    """In a later round the student takes the exam with the adapter of the round before."""
    name = "exam"

    def __init__(self, cfg: RunConfig):
        # A later round's adapter is <round before>/train/adapter, made by batch.local.rounds.
        super().__init__(cfg, [], load_spec(cfg.student).with_engine(cfg.engine), Path(cfg.run_dir) / "exam",
                         adapter=cfg.init_adapter,
                         merged=merged_copy(Path(cfg.init_adapter).parents[1]) if cfg.init_adapter else None)

    @classmethod
    def build(cls, graph) -> list[Stage]:
        return [cls(graph.cfg)]
