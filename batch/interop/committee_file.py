"""The committee file: JSON Lines, one line per mistaken question of the train split, holding what
the committee wrote for it (README, "Bring your own teacher outputs"):

    {"question_id": "chal-777", "question": "...", "gold": "145",
     "student_answer": "... The answer is 58.",
     "teachers": {"gpt-4o": {"rationale": "...", "feedback": "..."}, "claude": {...}},
     "reviews": [{"reviewer": "claude", "author": "gpt-4o", "score": 4},
                 {"reviewer": "gpt-4o", "author": "claude", "kind": "rationale", "review": "... [3]"}]}

Any text (an answer, a rationale, feedback, a review) is a string, or ``{"text": ..., "finish_reason":
"length"}`` for one cut at max_tokens (``prompt_too_long``: never generated, empty). ``read`` checks
a whole file against a run before anything is written; every error is one line naming the file,
the line and the field. ``lines`` writes a run's committee outputs in the same schema."""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ..tasks import Question, Verdict
from ..tasks.base import DataError, data_error
from ..teach import mistakes, unusable

KINDS = ("rationale", "feedback")
FINISH_REASONS = ("stop", "length", "prompt_too_long")
FIELDS = ("question_id", "question", "gold", "student_answer", "teachers", "reviews")
REVIEW_FIELDS = ("reviewer", "author", "kind", "score", "review")
# A teacher's name is a folder of the run (teach/<name>/) and a SLURM job name.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SHOWN = 10   # questions named in an error about several


@dataclass(frozen=True)
class Text:
    """What a model wrote, as a stage's engine would return it."""
    text: str
    finish_reason: str = "stop"


@dataclass
class Entry:
    """One line: a mistaken question and what the committee wrote about it."""
    line: int
    question: Question
    answer: Text                                    # the student's
    written: dict[tuple[str, str], Text]            # (teacher, kind) -> its rationale or feedback
    reviews: dict[tuple[str, str, str], Text]       # (reviewer, author, kind) -> the review


@dataclass
class CommitteeFile:
    path: Path
    entries: list[Entry]
    unused: Counter        # what this run's settings do not ask for, by what it is

    @property
    def questions(self) -> list[Question]:
        return [e.question for e in self.entries]

    def describe(self) -> str:
        left = "; left unused: " + ", ".join(f"{n} {what}" for what, n in self.unused.items()) if self.unused else ""
        return (f"{self.path}: {len(self.entries)} questions, {sum(len(e.written) for e in self.entries)} rationales "
                f"and feedback, {sum(len(e.reviews) for e in self.entries)} reviews{left}")


def _number(value) -> str:
    """A JSON number as text: 145.0 reads as 145."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


class _Reader:
    """Reads one file against a run: its questions (the train split), committee and settings."""

    def __init__(self, path: Path, task, split: list[Question], teachers: tuple[str, ...], feedback: bool):
        self.path, self.task, self.teachers, self.feedback = Path(path), task, teachers, feedback
        self.split = {q.id: q for q in split}
        self.line = 0
        self.unused: Counter = Counter()

    def fail(self, field: str | None, problem: str):
        raise data_error(self.path, problem, line=self.line, field=field)

    def get(self, obj: dict, name: str, where: str = ""):
        if obj.get(name) is None:
            self.fail(where + name, "missing")
        return obj[name]

    def object(self, value, field: str | None, allowed: tuple[str, ...] | None) -> dict:
        if not isinstance(value, dict):
            self.fail(field, f"expected a JSON object, got {type(value).__name__}")
        unknown = sorted(set(value) - set(allowed)) if allowed is not None else []
        if unknown:
            self.fail(f"{field}.{unknown[0]}" if field else unknown[0],
                      f"unknown field; the fields are {', '.join(allowed)}")
        return value

    def string(self, value, field: str) -> str:
        if not isinstance(value, str):
            self.fail(field, f"expected a string, got {type(value).__name__}")
        return value

    def text(self, value, field: str) -> Text:
        if isinstance(value, str):
            return Text(value)
        if not isinstance(value, dict):
            self.fail(field, f"expected a string or an object with 'text', got {type(value).__name__}")
        obj = self.object(value, field, ("text", "finish_reason"))
        text = Text(self.string(self.get(obj, "text", f"{field}."), f"{field}.text"),
                    self.string(obj.get("finish_reason", "stop"), f"{field}.finish_reason"))
        if text.finish_reason not in FINISH_REASONS:
            self.fail(f"{field}.finish_reason", f"{text.finish_reason!r} is not one of {', '.join(FINISH_REASONS)}")
        if text.finish_reason == "prompt_too_long" and text.text:
            self.fail(f"{field}.text", "a completion never generated (prompt_too_long) is empty")
        return text

    def teacher(self, value, field: str) -> str:
        if self.string(value, field) not in self.teachers:
            self.fail(field, f"unknown teacher {value!r} (the committee: {', '.join(self.teachers)})")
        return value

    def load(self, number: int, raw: str) -> dict:
        self.line = number
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            self.fail(None, f"not valid JSON: {e.msg} (column {e.colno})")
        return self.object(obj, None, FIELDS)

    def parse(self, number: int, raw: str) -> tuple[str, Entry | None]:
        """(question id, entry), the entry None for a question outside the split."""
        obj = self.load(number, raw)
        qid = self.string(self.get(obj, "question_id"), "question_id")
        question = self.split.get(qid)
        if question is None:
            return qid, None
        text = self.string(self.get(obj, "question"), "question")
        if text.split() != question.text.split():
            self.fail("question", f"differs from {self.task.name}'s question {qid}: {question.text[:60]!r}...")
        gold = self.get(obj, "gold")
        if isinstance(gold, bool) or not isinstance(gold, (str, int, float)) or _number(gold).strip() != question.gold:
            self.fail("gold", f"{gold!r} is not {self.task.name}'s gold answer to {qid} ({question.gold!r})")
        answer = self.text(self.get(obj, "student_answer"), "student_answer")
        graded = self.task.grade(answer.text, question)
        if graded.verdict is Verdict.CORRECT:
            self.fail("student_answer", f"the task's grader reads it as correct ({graded.answer}): only mistakes "
                                        "are taught")
        teachers = self.object(self.get(obj, "teachers"), "teachers", None)
        for name in teachers:
            self.teacher(name, "teachers")
        written = {}
        for name in self.teachers:
            outputs = self.object(self.get(teachers, name, "teachers."), f"teachers.{name}", KINDS)
            written[name, "rationale"] = self.text(self.get(outputs, "rationale", f"teachers.{name}."),
                                                   f"teachers.{name}.rationale")
            if self.feedback:
                written[name, "feedback"] = self.text(self.get(outputs, "feedback", f"teachers.{name}."),
                                                      f"teachers.{name}.feedback")
            elif "feedback" in outputs:
                self.unused["feedback texts (the run has --no-feedback)"] += 1
        return qid, Entry(number, question, answer, written, self.reviews(obj.get("reviews") or []))

    def reviews(self, given) -> dict[tuple[str, str, str], Text]:
        if not isinstance(given, list):
            self.fail("reviews", f"expected a list, got {type(given).__name__}")
        reviews: dict[tuple[str, str, str], Text] = {}
        first: dict[tuple[str, str, str], int] = {}
        for i, review in enumerate(given):
            at = f"reviews[{i}]"
            review = self.object(review, at, REVIEW_FIELDS)
            reviewer = self.teacher(self.get(review, "reviewer", f"{at}."), f"{at}.reviewer")
            author = self.teacher(self.get(review, "author", f"{at}."), f"{at}.author")
            if reviewer == author:
                self.fail(f"{at}.reviewer", f"{reviewer} reviews its own work: teachers review the others' only")
            kind = self.string(review.get("kind", "rationale"), f"{at}.kind")
            if kind not in KINDS:
                self.fail(f"{at}.kind", f"{kind!r} is not one of {', '.join(KINDS)}")
            key = (reviewer, author, kind)
            if key in first:
                self.fail(at, f"a second review by {reviewer} of {author}'s {kind} (the first: reviews[{first[key]}])")
            first[key] = i
            if ("score" in review) == ("review" in review):
                self.fail(at, "give a 'score' or a 'review' (its text), one of the two")
            if "review" in review:
                reviews[key] = self.text(review["review"], f"{at}.review")
                continue
            score = review["score"]
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                self.fail(f"{at}.score", f"expected a number, got {score!r} (a review's text goes in 'review')")
            # The review stage reads the score from this text as from any review: 6 is out of range.
            reviews[key] = Text(_number(score))
        return reviews


def read(path: Path, sha256: str, task, split: list[Question], teachers: tuple[str, ...], feedback: bool,
         reviewed: set[str], keep_cut: bool) -> CommitteeFile:
    """The file, checked against a run: its task's (limited) train split ``split``, its committee,
    whether it has feedback, the kinds its reviewers review (none with one teacher) and whether cut
    completions are kept (a review of a completion this run cannot use is left unused)."""
    path = Path(path)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{path}: changed since it was imported (sha256 {sha256[:16]}...): import it again "
                        "with `mapd import`", file=str(path))
    reader = _Reader(path, task, split, teachers, feedback)
    entries, outside, seen = [], [], {}
    for number, raw in _lines(path, data):
        qid, entry = reader.parse(number, raw)
        if qid in seen:
            reader.fail("question_id", f"{qid} again (first on line {seen[qid]})")
        seen[qid] = number
        if entry is None:
            outside.append(f"{qid} (line {number})")
        else:
            entries.append(entry)
    if outside:
        more = f" and {len(outside) - SHOWN} more" if len(outside) > SHOWN else ""
        raise data_error(path, f"{len(outside)} question(s) not in {task.name}'s train split of this run: "
                               f"{', '.join(outside[:SHOWN])}{more}")
    if not entries:
        raise data_error(path, "no questions")
    _check_reviews(reader, entries, teachers, reviewed, keep_cut)
    order = {q.id: i for i, q in enumerate(split)}
    entries.sort(key=lambda e: order[e.question.id])      # the exam's shards hold the split's order
    return CommitteeFile(path, entries, reader.unused)


def committee(path: Path) -> tuple[str, ...]:
    """The teachers of the file's first line, in its order: the committee of the run it fills."""
    path = Path(path)
    reader = _Reader(path, None, [], (), True)
    for number, raw in _lines(path, path.read_bytes()):
        names = tuple(reader.object(reader.get(reader.load(number, raw), "teachers"), "teachers", None))
        for name in names:
            if not NAME.fullmatch(name):
                reader.fail("teachers", f"{name!r}: a teacher's name is letters, digits, '.', '_' and '-' "
                                        "(it names a folder of the run)")
        if not names:
            reader.fail("teachers", "no teacher")
        return names
    raise data_error(path, "no questions")


def _lines(path: Path, data: bytes):
    """(line number, text) of each line that is not blank."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise data_error(path, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends.
    return [(number, raw) for number, raw in enumerate(text.split("\n"), start=1) if raw.strip()]


def _check_reviews(reader: _Reader, entries: list[Entry], teachers, reviewed: set[str], keep_cut: bool) -> None:
    """Every completion this run's reviewers review (``teach.unusable`` decides which can be) has a
    review by each other teacher; reviews of anything else are left unused, and counted."""
    written = [(i, author, kind, t.text, t.finish_reason) for i, e in enumerate(entries)
               for (author, kind), t in e.written.items() if kind in reviewed]
    frame = pl.DataFrame(written, orient="row", schema={"entry": pl.Int64, "author": pl.String, "kind": pl.String,
                                                        "completion": pl.String, "finish_reason": pl.String}
                         ).with_columns(reasoning=pl.lit(None, pl.String))     # an imported text is all answer
    usable: dict[int, list[tuple[str, str]]] = {}
    for i, author, kind in frame.filter(unusable(keep_cut).is_null()).select("entry", "author", "kind").iter_rows():
        usable.setdefault(i, []).append((author, kind))
    for i, entry in enumerate(entries):
        reader.line = entry.line
        for author, kind in usable.get(i, []):
            for reviewer in teachers:
                if reviewer != author and (reviewer, author, kind) not in entry.reviews:
                    reader.fail("reviews", f"no review by {reviewer} of {author}'s {kind}")
        for key in [k for k in entry.reviews if (k[1], k[2]) not in usable.get(i, [])]:
            del entry.reviews[key]
            reader.unused["reviews of completions this run does not review"] += 1


def lines(graph) -> list[dict]:
    """A run's committee outputs in the schema ``read`` takes: one line per mistake of its exam."""
    def text(row: dict):
        reason = row["finish_reason"]
        return row["completion"] if reason == "stop" else {"text": row["completion"], "finish_reason": reason}

    teaches, reviews = graph.named("teach"), graph.named("review")
    written: dict[str, dict] = {}
    for row in pl.concat([t.results() for t in teaches]).iter_rows(named=True):
        written.setdefault(row["question_id"], {}).setdefault(row["teacher"], {})[row["kind"]] = text(row)
    scored: dict[str, list] = {}
    for row in (pl.concat([r.results() for r in reviews]).iter_rows(named=True) if reviews else []):
        scored.setdefault(row["question_id"], []).append(
            {"reviewer": row["reviewer"], "author": row["author"], "kind": row["kind"], "review": text(row)})
    out = []
    for row in mistakes(graph.one("exam").results()).iter_rows(named=True):
        qid = row["question_id"]
        outputs = written.get(qid, {})
        out.append({"question_id": qid, "question": row["question"], "gold": row["gold"], "student_answer": text(row),
                    "teachers": {t.spec.name: outputs.get(t.spec.name, {}) for t in teaches},
                    "reviews": scored.get(qid, [])})
    return out
