"""DATASET: decide which rationales (and feedback) the committee accepted, select instruction
records for training, and write the committee's statistics.

Records come in two kinds (the training contract, `records.parquet`):
- rationale: the student's exam prompt -> an accepted rationale;
- feedback: the exam prompt + the student's wrong answer + the gold hint -> a teacher's feedback.
Every record keeps its provenance: question id, teacher, scores and reviewers. An unusable
completion (empty, prompt too long, cut at max_tokens: ``teach.unusable``) is rejected before any
other rule, so it never becomes a record.

A rationale whose wrong final answer the grader only guessed (``how`` = fallback: the last number
of a text without an answer marker) is "uncheckable": the answer check is skipped for it and the
reviewers decide, since about a third of such rejections were misreadings of correct rationales.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

import polars as pl

from .committee import Decision, Policy, Score, ScoreStatus, decide, policy_from
from .config import request_seed
from .prompts import load_prompt
from .review import Review
from .shards import atomic_write, why_not_done, write_shard
from .stage import Stage, WholeRunStage
from .stats import committee_stats, format_stats
from .tasks import Verdict
from .teach import Teach, unusable

log = logging.getLogger(__name__)

RECORD_SCHEMA = {
    "record_id": pl.String,
    "question_id": pl.String,
    "kind": pl.String,
    "prompt": pl.String,
    "response": pl.String,
    "teacher": pl.String,
    "scores": pl.List(pl.Int8),
    "reviewers": pl.List(pl.String),
    "mean_score": pl.Float64,
}


class Dataset(WholeRunStage):
    name = "dataset"

    def __init__(self, exam, teaches: list[Teach], reviews: list[Review]):
        super().__init__(exam.cfg, [exam, *teaches, *reviews], None)
        self.exam = exam
        self.teaches = teaches
        self.reviews = reviews
        self.policy: Policy = policy_from(self.cfg.policy, self.cfg.policy_overrides)
        self.prompts = {"rationale": load_prompt("train/rationale"), "feedback": load_prompt("train/feedback")}
        self.dir = Path(self.cfg.run_dir) / self.name
        self.records_path = self.dir / "records.parquet"
        self.decisions_path = self.dir / "decisions.parquet"

    @classmethod
    def build(cls, graph) -> list[Stage]:
        return [cls(graph.one("exam"), graph.named("teach"), graph.named("review"))]

    def identity(self) -> dict:
        return {
            "stage": self.name, "selection": self.cfg.selection, "policy": dataclasses.asdict(self.policy),
            "feedback": self.cfg.feedback, "seed": self.cfg.seed, "keep_cut": self.cfg.keep_cut,
            "prompts_sha256": {k: p.sha256 for k, p in self.prompts.items()},
            "inputs": self.inputs(0),
        }

    def outputs(self, shard: int = 0) -> list[Path]:
        return [self.records_path]

    def stale(self) -> str | None:
        identity = self.identity()
        return why_not_done(self.records_path, identity) or why_not_done(self.decisions_path, identity)

    def stats(self) -> dict:
        return json.loads((self.dir / "stats.json").read_text())

    def make(self) -> None:
        decisions = self.decisions()
        records = self.select(decisions)
        reviews = pl.concat([r.results() for r in self.reviews]) if self.reviews else None
        stats = committee_stats(self.exam.results(), decisions, reviews, records, self.policy, len(self.teaches))
        identity = self.identity()
        # Stats first: the records' manifest, written last, is what marks the stage done.
        atomic_write(self.dir / "stats.json", lambda f: f.write(json.dumps(stats, indent=2).encode()))
        write_shard(decisions, self.decisions_path, identity, stage=self.name)
        write_shard(records, self.records_path, identity, stage=self.name)
        log.info("dataset: %d records written to %s", records.height, self.records_path)

    def outcome(self, figures: dict) -> str:
        return f"{format_stats(self.stats())}\ninstruction records: {self.records_path}"

    def summary_line(self) -> dict:
        stats = self.stats()
        dropped = stats["mistakes"] - stats["questions_kept"]
        unusable: dict[str, int] = {}
        for kinds in stats["unusable"].values():
            for whys in kinds.values():
                for why, n in whys.items():
                    unusable[why] = unusable.get(why, 0) + n
        return {"stage": self.key, "rows": sum(stats["records"].values()),
                "prompt_too_long": unusable.get("prompt too long", 0), "hit_max_tokens": unusable.get("cut at max_tokens", 0),
                "empty": unusable.get("empty", 0), "parse_failures": 0,
                "note": f"{stats['rationales'] - stats['rationales_accepted']} rationales rejected; "
                        f"{dropped} of {stats['mistakes']} mistaken questions dropped (no accepted rationale); "
                        f"{sum(unusable.values())} completions unusable (never reviewed or trained on)"}

    def decisions(self) -> pl.DataFrame:
        """Every rationale and feedback the committee wrote, with its scores and the decision."""
        gold = self.exam.results().select("question_id", "gold")
        written = (pl.concat([t.results() for t in self.teaches]).join(gold, on="question_id", how="left")
                   .with_columns(unusable=unusable(self.cfg.keep_cut)))
        if self.reviews:
            reviews = pl.concat([r.results() for r in self.reviews])
            scored = (reviews.group_by("question_id", "author", "kind", maintain_order=True)
                      .agg(pl.col("score"), pl.col("score_status"), pl.col("reviewer").alias("reviewers"))
                      .rename({"author": "teacher"}))
            written = written.join(scored, on=["question_id", "teacher", "kind"], how="left")
        else:
            written = written.with_columns(score=pl.lit(None, pl.List(pl.Int8)),
                                           score_status=pl.lit(None, pl.List(pl.String)),
                                           reviewers=pl.lit(None, pl.List(pl.String)))
        rows = []
        for w in written.iter_rows(named=True):
            decision = self._decide(w)
            rows.append({**w, "accepted": decision.accepted, "mean_score": decision.mean, "reason": decision.reason})
        return pl.DataFrame(rows, schema={**written.schema, "accepted": pl.Boolean, "mean_score": pl.Float64,
                                          "reason": pl.String})

    def _decide(self, w: dict):
        scores = [Score(v, ScoreStatus(s)) for v, s in zip(w["score"] or [], w["score_status"] or [])]
        if w["unusable"]:
            return Decision(False, None, 0, f"unusable: {w['unusable']}")
        if w["kind"] == "feedback":
            if not self.policy.review_feedback or not self.reviews:
                return Decision(True, None, 0, "feedback is not peer-reviewed")
            return decide(scores, dataclasses.replace(self.policy, answer_check=False))
        correct = None if w["verdict"] == Verdict.UNPARSEABLE.value else w["verdict"] == Verdict.CORRECT.value
        policy = self.policy
        if correct is False and w["how"] == "fallback":
            policy = dataclasses.replace(policy, answer_check=False)   # uncheckable: the reviewers decide
        if not self.reviews:
            # Single-teacher mode: no peer review; only the answer check, if the policy has it.
            if policy.answer_check and not correct:
                return Decision(False, None, 0, f"answer check failed (answer {w['answer']} != gold {w['gold']})")
            return Decision(True, None, 0, "single teacher: not peer-reviewed")
        return decide(scores, policy, answer_correct=correct, answer=w["answer"], gold=w["gold"])

    def select(self, decisions: pl.DataFrame) -> pl.DataFrame:
        exam = {r["question_id"]: r for r in self.exam.results().iter_rows(named=True)}
        accepted = decisions.filter(pl.col("accepted"))
        records = []
        for (qid,), group in accepted.group_by("question_id", maintain_order=True):
            rationales = group.filter(pl.col("kind") == "rationale").to_dicts()
            if not rationales:
                continue   # no accepted rationale: the question is dropped, as in the paper
            feedback = group.filter(pl.col("kind") == "feedback").to_dicts()
            if self.cfg.selection == "paper":
                rng = random.Random(request_seed(self.cfg.seed, "select", qid))
                rationales = [rng.choice(rationales)]
                feedback = [rng.choice(feedback)] if feedback else []
            records += [self._record(w, exam[qid]) for w in rationales + feedback]
        return pl.DataFrame(records, schema=RECORD_SCHEMA)

    def _record(self, w: dict, exam_row: dict) -> dict:
        instruction = self.exam.prompt.render(question=exam_row["question"])
        prompt = self.prompts[w["kind"]].render(instruction=instruction, student_answer=exam_row["completion"],
                                                gold=exam_row["gold"])
        return {
            "record_id": f"{w['kind']}:{w['teacher']}:{w['question_id']}", "question_id": w["question_id"],
            "kind": w["kind"], "prompt": prompt, "response": w["completion"], "teacher": w["teacher"],
            "scores": w["score"] or [], "reviewers": w["reviewers"] or [], "mean_score": w["mean_score"],
        }

