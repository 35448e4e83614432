"""DATASET: decide which rationales (and feedback) the committee accepted, select instruction
records for training, and write the committee's statistics.

Records come in two kinds (the training contract, `records.parquet`):
- rationale: the student's exam prompt -> an accepted rationale;
- feedback: the exam prompt + the student's wrong answer + the gold hint -> a teacher's feedback.
Every record keeps its provenance: question id, teacher, scores and reviewers. An unusable
completion (empty, prompt too long, cut at max_tokens or inside its reasoning: ``teach.unusable``)
is rejected before any other rule, so it never becomes a record.

A rationale whose wrong final answer the grader only guessed (``how`` = fallback: the last number
of a text without an answer marker) is "uncheckable": the answer check is skipped for it and the
reviewers decide, since about a third of such rejections were misreadings of correct rationales.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import random
from pathlib import Path

import polars as pl

from .committee import Policy, decide_all, policy_from
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
_UNREVIEWED, _SINGLE = "feedback is not peer-reviewed", "single teacher: not peer-reviewed"   # reasons that accept


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
        reviews = self._reviews()
        decisions = self.decisions(reviews)
        records = self.select(decisions)
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
        unusable = collections.Counter()   # by reason, over teachers and kinds
        for kinds in stats["unusable"].values():
            for whys in kinds.values():
                unusable.update(whys)
        return {"stage": self.key, "rows": sum(stats["records"].values()),
                "prompt_too_long": unusable.get("prompt too long", 0),
                "hit_max_tokens": unusable["cut at max_tokens"] + unusable["cut in reasoning"],
                "empty": unusable.get("empty", 0), "parse_failures": 0,
                "note": f"{stats['rationales'] - stats['rationales_accepted']} rationales rejected; "
                        f"{dropped} of {stats['mistakes']} mistaken questions dropped (no accepted rationale); "
                        f"{sum(unusable.values())} completions unusable (never reviewed or trained on)"}

    def _reviews(self) -> pl.DataFrame | None:
        """Every review, read once, without its prompt and text: the bulk of the reviews, not needed here."""
        if not self.reviews:
            return None
        return pl.concat([r.results().select("question_id", "author", "reviewer", "kind", "score", "score_status")
                          for r in self.reviews])

    def decisions(self, reviews: pl.DataFrame | None = None) -> pl.DataFrame:
        """Every rationale and feedback the committee wrote, with its scores and the decision
        (``reviews``: those of ``_reviews``, read here unless given)."""
        gold = self.exam.results().select("question_id", "gold")
        written = (pl.concat([t.results() for t in self.teaches]).join(gold, on="question_id", how="left")
                   .with_columns(unusable=unusable(self.cfg.keep_cut)))
        if self.reviews:
            reviews = self._reviews() if reviews is None else reviews
            scored = (reviews.group_by("question_id", "author", "kind", maintain_order=True)
                      .agg(pl.col("score"), pl.col("score_status"), pl.col("reviewer").alias("reviewers"))
                      .rename({"author": "teacher"}))
            written = written.join(scored, on=["question_id", "teacher", "kind"], how="left")
        else:
            written = written.with_columns(score=pl.lit(None, pl.List(pl.Int8)),
                                           score_status=pl.lit(None, pl.List(pl.String)),
                                           reviewers=pl.lit(None, pl.List(pl.String)))
        return self._decide(written).select(*written.columns, "accepted", "mean_score", "reason")

    def _decide(self, written: pl.DataFrame) -> pl.DataFrame:
        """The committee's rule (``decide_all``) for every row at once, after this stage's own
        rules: an unusable completion is rejected, feedback nobody reviewed is accepted, and with
        one teacher only the answer check applies."""
        verdict = pl.col("verdict")
        written = written.with_columns(answer_correct=pl.when(verdict == Verdict.UNPARSEABLE.value).then(None)
                                       .otherwise(verdict.eq_missing(Verdict.CORRECT.value)))
        feedback = pl.col("kind") == "feedback"
        uncheckable = pl.col("answer_correct").eq_missing(False) & pl.col("how").eq_missing("fallback")
        checked = ~feedback & ~uncheckable   # feedback is never answer-checked; the uncheckable left to the reviewers
        decided = decide_all(written, self.policy, checked)
        unreviewed = feedback & pl.lit(not (self.policy.review_feedback and self.reviews))
        reason = (pl.when(pl.col("unusable").is_not_null()).then(pl.format("unusable: {}", "unusable"))
                  .when(unreviewed).then(pl.lit(_UNREVIEWED)))
        if self.reviews:
            reason = reason.otherwise(pl.col("reason"))
        else:   # single-teacher mode: no peer review; only the answer check, if the policy has it
            failed = pl.lit(self.policy.answer_check) & checked & pl.col("answer_correct").ne_missing(True)
            shown = (pl.col(c).fill_null("None") for c in ("answer", "gold"))   # as Python printed a None
            reason = (reason.when(failed).then(pl.format("answer check failed (answer {} != gold {})", *shown))
                      .otherwise(pl.lit(_SINGLE)))
        by_stage = pl.col("unusable").is_not_null() | unreviewed | pl.lit(not self.reviews)
        return decided.with_columns(mean_score=pl.when(~by_stage).then(pl.col("mean_score")), reason=reason
                                    ).with_columns(accepted=pl.col("reason").is_in(["accepted", _UNREVIEWED, _SINGLE]))

    def select(self, decisions: pl.DataFrame) -> pl.DataFrame:
        """The records: per question with an accepted rationale (the others are dropped, as in the
        paper), its accepted rationales then feedback, or with the paper's selection one of each;
        questions in the order of their first accepted row."""
        kept = (decisions.filter(pl.col("accepted")).with_row_index("order")
                .with_columns(first=pl.col("order").min().over("question_id"))
                .filter((pl.col("kind") == "rationale").any().over("question_id")))
        if self.cfg.selection == "paper":
            kept = self._pick(kept)
        kept = kept.sort("first", pl.col("kind") != "rationale", "order")
        exam = self.exam.results().select("question_id", "question", pl.col("completion").alias("student_answer"))
        kept = kept.join(exam, on="question_id", how="left", maintain_order="left")
        prompts = [self._prompt(*row) for row in kept.select("kind", "question", "student_answer", "gold").iter_rows()]
        return kept.select(
            record_id=pl.format("{}:{}:{}", "kind", "teacher", "question_id"), question_id="question_id", kind="kind",
            prompt=pl.Series(prompts, dtype=pl.String), response="completion", teacher="teacher",
            scores=pl.col("score").fill_null([]), reviewers=pl.col("reviewers").fill_null([]), mean_score="mean_score",
        ).cast(RECORD_SCHEMA)

    def _pick(self, kept: pl.DataFrame) -> pl.DataFrame:
        """The paper's selection: per question one rationale and one feedback, drawn by a generator
        seeded by the question id. It chooses a position among the question's accepted rationales
        (then feedback) in the decisions' order: the same draw, and so record, as choosing the row."""
        counts = kept.group_by("question_id").agg(rationales=(pl.col("kind") == "rationale").sum(),
                                                  feedback=(pl.col("kind") == "feedback").sum())
        picks = []
        for qid, rationales, feedback in counts.iter_rows():
            rng = random.Random(request_seed(self.cfg.seed, "select", qid))
            picks.append((qid, rng.choice(range(rationales)), rng.choice(range(feedback)) if feedback else None))
        picks = pl.DataFrame(picks, schema={"question_id": pl.String, "rationale": pl.Int64, "feedback": pl.Int64},
                             orient="row")
        nth = pl.int_range(pl.len()).over("question_id", "kind")
        return (kept.join(picks, on="question_id", how="left", maintain_order="left")
                .filter(nth == pl.when(pl.col("kind") == "rationale").then("rationale").otherwise("feedback"))
                .drop("rationale", "feedback"))

    def _prompt(self, kind: str, question: str, student_answer: str, gold: str) -> str:
        instruction = self.exam.prompt.render(question=question)
        return self.prompts[kind].render(instruction=instruction, student_answer=student_answer, gold=gold)
