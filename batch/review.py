"""REVIEW: one reviewer scores every usable rationale written by the OTHER teachers (never its
own), shown the gold hint, and with ``review_feedback`` their feedback too. One job = one reviewer
model, loaded once, for its shard. Requests are grouped by question so the ones sharing a
prompt prefix run together and vLLM's prefix cache serves them."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from mapd.local_teachers.engine import Request

from .committee import parse_score, policy_from
from .config import request_seeds
from .prompts import load_prompt
from .stage import ModelStage, Stage, completion_columns
from .teach import Teach, unusable, with_solution

SCHEMA = {
    "question_id": pl.String,
    "author": pl.String,
    "reviewer": pl.String,
    "kind": pl.String,              # what was reviewed: "rationale" | "feedback"
    "prompt": pl.String,
    "completion": pl.String,
    "reasoning": pl.String,         # a reasoning model's thinking before the completion; null for others
    "score": pl.Int8,               # null when the review gave no usable score
    "score_status": pl.String,      # "ok" | "no_score" | "out_of_range"
    "prompt_tokens": pl.Int32,
    "completion_tokens": pl.Int32,
    "finish_reason": pl.String,
    "seed": pl.Int64,
}


class Review(ModelStage):
    name = "review"
    schema = SCHEMA

    def __init__(self, reviewer: Teach, committee: list[Teach], review_feedback: bool):
        """``reviewer`` is the reviewing model's own teach stage (its model and settings);
        ``committee`` all teach stages, the reviewer's among them."""
        cfg = reviewer.cfg
        authors = [t for t in committee if t.spec.name != reviewer.spec.name]
        if not authors:
            raise ValueError("peer review needs at least two teachers; with one, run without review")
        super().__init__(cfg, [reviewer.exam, *authors], reviewer.spec, Path(cfg.run_dir) / "review" / reviewer.spec.name,
                         part=reviewer.spec.name)
        self.exam = reviewer.exam
        self.authors = authors
        self.review_feedback = review_feedback and cfg.feedback
        family = self.exam.task.family
        self.prompts = {"rationale": load_prompt("peer_review", family)}
        if self.review_feedback:
            self.prompts["feedback"] = load_prompt("peer_review", "feedback")

    @classmethod
    def build(cls, graph) -> list[Stage]:
        """One reviewer per teacher; one teacher alone is the paper's single-teacher ablation,
        without peer review."""
        teaches = graph.named("teach")
        if len(teaches) < 2:
            return []
        review_feedback = policy_from(graph.cfg.policy, graph.cfg.policy_overrides).review_feedback
        return [cls(t, teaches, review_feedback) for t in teaches]

    def settings(self) -> dict:
        return {
            "stage": self.name, "reviewer": self.spec.name, "model_identity": self.spec.identity(),
            "seed": self.cfg.seed, "num_shards": self.cfg.num_shards,
            "prompts_sha256": {k: p.sha256 for k, p in self.prompts.items()},
            "authors": [t.spec.name for t in self.authors], "gold_hint": self.cfg.gold_hint,
            "keep_cut": self.cfg.keep_cut,
        }

    def rows(self, shard: int, engine) -> dict[str, list]:
        # Polars joins and renders the prompts; Python only seeds, asks and reads the scores.
        exam = with_solution(self.exam.shard_frame(shard), {q.id: q for q in self.exam.questions}, self.cfg.gold_hint)
        exam = exam.select("question_id", "question", "gold", "solution", student_answer="completion")
        written = (pl.concat([t.shard_frame(shard).select("question_id", "teacher", "kind", "completion",
                                                            "finish_reason", "reasoning") for t in self.authors])
                   .filter(pl.col("kind").is_in(list(self.prompts)), unusable(self.cfg.keep_cut).is_null())
                   .sort("question_id", "kind", "teacher", maintain_order=True)
                   .join(exam, on="question_id", how="left", maintain_order="left"))
        fields = {k: pl.col(k) for k in ("question", "gold", "student_answer", "solution")}
        fields["rationale"] = fields["feedback"] = pl.col("completion")     # what is reviewed, by kind
        text = pl.lit(None, pl.String)
        for kind, prompt in self.prompts.items():
            text = pl.when(pl.col("kind") == kind).then(prompt.expr(**fields)).otherwise(text)
        written = written.select("question_id", "teacher", "kind", text.alias("text"),
                                 pl.concat_str("teacher", "kind", "question_id", separator=":").alias("id"))
        qids, authors, kinds = (written[c].to_list() for c in ("question_id", "teacher", "kind"))
        seeds = request_seeds(self.cfg.seed, (self.name, self.spec.name), zip(authors, kinds, qids))
        sampling = self.spec.sampling
        completions = engine.generate([Request(i, (("user", t),), sampling, s)
                                       for i, t, s in zip(written["id"].to_list(), written["text"].to_list(), seeds)])
        scores = [parse_score(c.text) for c in completions]
        return {
            "question_id": qids, "author": authors, "reviewer": [self.spec.name] * len(qids), "kind": kinds,
            **completion_columns(completions, seeds), "score": [s.value for s in scores],
            "score_status": [s.status.value for s in scores],
        }
