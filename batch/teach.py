"""TEACH: for every mistake of the exam, one teacher writes (a) feedback on the student's wrong
answer, shown the gold hint, and (b) its own rationale, shown only the question (the student's
own exam prompt). One job = one teacher model, loaded once, for its shard.

The gold hint (``gold_hint``) is the gold answer, or, by default, the task's worked solution
where it has one (GSM8K's solution, StrategyQA's facts), as the authors showed it; the reviewers
see the same hint. A completion that is empty, was never generated (its prompt too long) or was
cut at max_tokens (or inside its reasoning) is unusable: never reviewed, never trained on
(``unusable``). A reasoning teacher's thinking is kept in ``reasoning``; ``completion`` holds
what follows it, which is all the grader, the reviewers and the records read."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import polars as pl

from mapd.local_teachers.engine import Request
from mapd.local_teachers.registry import load_spec

from .config import request_seeds
from .exam import Exam
from .prompts import load_prompt
from .stage import ModelStage, Stage, completion_columns, cut_in_reasoning
from .tasks import Question, Verdict

SCHEMA = {
    "question_id": pl.String,
    "teacher": pl.String,
    "kind": pl.String,              # "rationale" | "feedback"
    "prompt": pl.String,
    "completion": pl.String,
    "reasoning": pl.String,         # a reasoning model's thinking before the completion; null for others
    "answer": pl.String,            # rationales: the answer the task's grader extracted
    "verdict": pl.String,           # rationales: that answer against gold; feedback: null
    "how": pl.String,               # rationales: how the grader read it: marker | fallback | null
    "prompt_tokens": pl.Int32,
    "completion_tokens": pl.Int32,
    "finish_reason": pl.String,
    "seed": pl.Int64,
}


def unusable(keep_cut: bool = False) -> pl.Expr:
    """Why a written completion cannot be reviewed or trained on; null when it can. A cut one
    (``finish_reason`` length) may stop mid-sentence, before its answer: kept only on request;
    one cut inside its reasoning has no answer at all: never kept."""
    return (pl.when(pl.col("finish_reason") == "prompt_too_long").then(pl.lit("prompt too long"))
            .when(cut_in_reasoning()).then(pl.lit("cut in reasoning"))
            .when(pl.col("completion").str.strip_chars() == "").then(pl.lit("empty"))
            .when(pl.lit(not keep_cut) & (pl.col("finish_reason") == "length")).then(pl.lit("cut at max_tokens"))
            .otherwise(pl.lit(None, pl.String)))


def gold_solution(question: Question, gold_hint: str) -> str:
    """The worked-solution paragraph of the feedback and review prompts ($solution): empty when
    only the answer is shown or the task has no solution."""
    if gold_hint != "solution" or not question.solution:
        return ""
    return f"Reference solution:\n{question.solution}\n\n"


def with_solution(exam_rows: pl.DataFrame, questions: dict[str, Question], gold_hint: str) -> pl.DataFrame:
    """The exam's rows with their questions' $solution paragraphs (see ``gold_solution``)."""
    solutions = [gold_solution(questions[q], gold_hint) for q in exam_rows["question_id"].to_list()]
    return exam_rows.with_columns(solution=pl.Series(solutions, dtype=pl.String))


def mistakes(exam_rows: pl.DataFrame) -> pl.DataFrame:
    """Every answer that is not correct: wrong ones, and unparseable ones (no answer is a mistake too)."""
    return exam_rows.filter(pl.col("verdict") != Verdict.CORRECT.value)


class Teach(ModelStage):
    name = "teach"
    schema = SCHEMA

    def __init__(self, exam: Exam, teacher: str):
        spec = load_spec(teacher).with_engine(exam.cfg.engine)
        super().__init__(exam.cfg, [exam], spec, Path(exam.cfg.run_dir) / "teach" / spec.name, part=spec.name)
        self.exam = exam
        self.rationale_prompt = exam.prompt
        self.feedback_prompt = load_prompt("teacher_feedback", exam.task.family)

    @classmethod
    def build(cls, graph) -> list[Stage]:
        exam = graph.one("exam")
        return [cls(exam, teacher) for teacher in graph.cfg.teachers]

    def settings(self) -> dict:
        return {
            "stage": self.name, "teacher": self.spec.name, "model_identity": self.spec.identity(),
            "seed": self.cfg.seed, "num_shards": self.cfg.num_shards, "feedback": self.cfg.feedback,
            "gold_hint": self.cfg.gold_hint,
            "rationale_prompt_sha256": self.rationale_prompt.sha256,
            "feedback_prompt_sha256": self.feedback_prompt.sha256,
        }

    @cached_property
    def questions(self):
        return {q.id: q for q in self.exam.questions}

    def rows(self, shard: int, engine) -> dict[str, list]:
        """For every mistake in the exam's shard its rationale, then its feedback."""
        wrong = with_solution(mistakes(self.exam.shard_frame(shard)), self.questions, self.cfg.gold_hint).with_row_index()
        asks = [wrong.select("index", "question_id", kind=pl.lit("rationale"),
                             text=self.rationale_prompt.expr(question=pl.col("question")))]
        if self.cfg.feedback:
            fields = {k: pl.col(k) for k in ("question", "gold", "solution")}
            asks.append(wrong.select("index", "question_id", kind=pl.lit("feedback"),
                                     text=self.feedback_prompt.expr(student_answer=pl.col("completion"), **fields)))
        todo = pl.concat(asks).sort("index", maintain_order=True)
        qids, kinds = todo["question_id"].to_list(), todo["kind"].to_list()
        seeds = request_seeds(self.cfg.seed, (self.name, self.spec.name), zip(kinds, qids))
        sampling = self.spec.sampling
        completions = engine.generate([Request(f"{k}:{q}", (("user", t),), sampling, s)
                                       for k, q, t, s in zip(kinds, qids, todo["text"].to_list(), seeds)])
        grade, questions = self.exam.task.grade, self.questions
        graded = [grade(c.text, questions[q]) if k == "rationale" else None for k, q, c in zip(kinds, qids, completions)]
        return {
            "question_id": qids, "teacher": [self.spec.name] * len(qids), "kind": kinds,
            **completion_columns(completions, seeds), "answer": [g and g.answer for g in graded],
            "verdict": [g and g.verdict.value for g in graded], "how": [g and g.how for g in graded],
        }
