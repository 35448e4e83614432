"""The committee's verdicts: read a peer review's score, and decide whether a rationale is accepted.

Reading a score (``parse_score``)
---------------------------------
Reviewers are asked for "a score from 1 to 5 in square brackets on the last line", but they
also cite steps ("step [2] is wrong"), do arithmetic ("3/5 * 20 = 12"), add a closing remark
after the score, or stop mid-sentence. So the score is looked for first on the last non-empty
line (where it was asked for) and, only if that line has none, in the whole review. In each
place the first of these forms that occurs wins, and of that form its last occurrence:

1. a labelled score: ``Score: 4``, ``Final score: [5]``, ``score of 4``, ``Rating: 4/5``,
   ``Score (1-5): 4`` (a label says outright that the number is the score, so it beats a
   bracket that may only cite a step);
2. a bracketed number: ``[4]``, ``[ 4 ]``, ``[[4]]``, ``**[4]**``, ``[4/5]``, ``[4.0]``;
3. a bare fraction of the scale: ``4/5``, ``4 out of 5``; not ``3/5 of the apples`` nor
   ``3/5 * 20``, and only with a numerator in range (``12/5`` is arithmetic, not a score);
4. on the last line only, a number standing alone: ``4``, ``**4**``, ``4.``. A number inside
   a sentence is never taken: a review cut off at "... and got 36" has no score.

A number found but not an integer in ``low..high`` is OUT_OF_RANGE with value None: ``[0]``,
``[6]``, ``[10]``, and also ``[4.5]`` (never rounded) and ``[8/10]`` (another scale, never
rescaled). Nothing found (or an empty review) is NO_SCORE. Text is NFKC-normalised first, so
full-width brackets and digits read as ASCII; other Unicode digits (``[٤]``) are digits too.

Accepting a rationale (``decide``)
----------------------------------
Of a rationale's review scores, OK ones are kept; invalid ones (NO_SCORE, OUT_OF_RANGE) are
dropped, or, when ``invalid_as`` is an int, counted as that score. Then, in this order:

1. with ``answer_check``, the rationale's own final answer must be the gold one: rejected when
   it is wrong, and when it could not be checked (``answer_correct=None``);
2. fewer counted scores than ``min_reviews``: rejected;
3. accepted when the mean of the counted scores is strictly greater than ``threshold``.

The mean is reported even for a rationale rejected by the answer check, so the check's effect
can be counted. The ``paper`` preset is the authors' rule exactly: scores in 1..5 are kept,
accepted when their mean is > 3, no answer check, feedback not reviewed. ``review_feedback`` is
read by the stages, not here: reviewed feedback goes through the rule without answer check.

``decide_all`` applies the rule to every row of a frame at once (the dataset stage's hundreds
of thousands of rationales, as polars expressions); ``decide`` is it for one rationale.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl

LOW, HIGH = 1, 5   # the score scale the review prompts ask for

_NUM = r"-?\d+(?:\.\d+)?"
# A decimal point followed by a digit would make the match a prefix of a longer number.
_END = r"(?!\.?\d)"
_LABELLED = re.compile(
    r"\b(?:score|rating|grade)\b"
    r"(?:\s*[\[(]\s*\d+\s*(?:-|–|to)\s*\d+\s*[\])])?"   # an announced scale, "Score (1-5): 4"
    r"[\s*_]*(?:is\b|of\b|:|=)?[\s*_\[]*"            # markdown around it: "**Score:** 4"
    rf"({_NUM})(?:\s*(?:/|out\s+of)\s*(\d+))?{_END}"
    r"(?!\s*(?:-|–|to)\s*\d)",                        # a range, "Score: 3-4", is no score
    re.IGNORECASE)
_BRACKETED = re.compile(
    r"\[\s*\**\s*(?:(?:final\s+)?(?:score|rating|grade)\s*:?\s*)?"
    rf"({_NUM})\s*\**\s*(?:(?:/|out\s+of)\s*(\d+)\s*)?\]",
    re.IGNORECASE)
_FRACTION = re.compile(
    rf"(?<![\w./])(\d+)\s*(?:/|out\s+of)\s*(\d+){_END}"
    r"(?!\s*/|\)?\s*(?:of\b|[*×·+=^]))",               # "3/5 of 40", "(3/5) * 20", "3/5/2024"
    re.IGNORECASE)
_ALONE = re.compile(rf"^[\s*_#>`(]*({_NUM})[\s*_`).!]*$")
# Brackets NFKC leaves alone but reviewers use.
_BRACKETS = str.maketrans("【〔〖】〕〗", "[[[]]]")


class ScoreStatus(str, enum.Enum):
    OK = "ok"
    NO_SCORE = "no_score"
    OUT_OF_RANGE = "out_of_range"


@dataclass(frozen=True)
class Score:
    value: int | None          # set exactly when status is OK
    status: ScoreStatus

    def __post_init__(self):
        if (self.value is not None) != (self.status is ScoreStatus.OK):
            raise ValueError(f"a score has a value exactly when its status is ok, got {self}")


def parse_score(review: str, low: int = LOW, high: int = HIGH) -> Score:
    """The score a review gave, read by the rules in the module docstring."""
    text = review or ""
    if not text.isascii():      # ASCII is its own NFKC form: most reviews skip the normalisation
        text = unicodedata.normalize("NFKC", text).translate(_BRACKETS)
    last = next((line for line in reversed(text.splitlines()) if line.strip()), None)
    if last is None:
        return Score(None, ScoreStatus.NO_SCORE)
    for place, last_line in ((last, True), (text, False)):
        for pattern in (_LABELLED, _BRACKETED, _FRACTION):
            found = None
            for m in pattern.finditer(place):
                score = _score(m[1], m[2], low, high)
                if pattern is not _FRACTION or score.status is ScoreStatus.OK:   # else arithmetic
                    found = score
            if found:
                return found
        if last_line and (m := _ALONE.match(place)):
            return _score(m[1], None, low, high)
    return Score(None, ScoreStatus.NO_SCORE)


@functools.lru_cache(maxsize=1024)    # a few distinct numbers over millions of reviews
def _score(number: str, scale: str | None, low: int, high: int) -> Score:
    value = float(number)
    if (scale is not None and int(scale) != high) or not value.is_integer() or not low <= value <= high:
        return Score(None, ScoreStatus.OUT_OF_RANGE)
    return Score(int(value), ScoreStatus.OK)


@dataclass(frozen=True)
class Policy:
    threshold: float = 3.0          # accepted when the mean of counted scores is > threshold (strictly)
    min_reviews: int = 1            # fewer counted scores than this: rejected
    answer_check: bool = True       # the rationale's own final answer must equal gold
    review_feedback: bool = False   # feedback is peer-reviewed too, and must pass decide (no answer check)
    invalid_as: int | None = None   # None: invalid scores dropped; an int: counted as that score

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"threshold must be a number, got {self.threshold!r}")
        # 3 and 3.0 are one policy, and must hash alike in a stage's identity.
        object.__setattr__(self, "threshold", float(self.threshold))
        if isinstance(self.min_reviews, bool) or not isinstance(self.min_reviews, int) or self.min_reviews < 1:
            raise ValueError(f"min_reviews must be an int >= 1, got {self.min_reviews!r}")
        for name in ("answer_check", "review_feedback"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.invalid_as is not None and (isinstance(self.invalid_as, bool) or not isinstance(self.invalid_as, int)
                                            or not LOW <= self.invalid_as <= HIGH):
            raise ValueError(f"invalid_as must be None or an int in {LOW}..{HIGH}, got {self.invalid_as!r}")


PRESETS: dict[str, Policy] = {
    "paper": Policy(threshold=3.0, min_reviews=1, answer_check=False, review_feedback=False, invalid_as=None),
    "default": Policy(),
}


def policy_from(name: str = "default", overrides: Mapping[str, object] | None = None) -> Policy:
    """The preset ``name`` with the fields in ``overrides`` replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown policy preset {name!r}; choose one of {', '.join(PRESETS)}")
    fields = [f.name for f in dataclasses.fields(Policy)]
    unknown = sorted(set(overrides or {}) - set(fields))
    if unknown:
        raise ValueError(f"unknown policy field(s) {', '.join(unknown)}; the fields are {', '.join(fields)}")
    return dataclasses.replace(PRESETS[name], **dict(overrides or {}))


@dataclass(frozen=True)
class Decision:
    accepted: bool
    mean: float | None    # of the counted scores; None when there are none
    valid: int            # how many scores were counted (with invalid_as, the invalid ones too)
    reason: str           # "accepted", or why not


def decide(scores: Sequence[Score], policy: Policy, answer_correct: bool | None = None, *,
           answer: str | None = None, gold: str | None = None) -> Decision:
    """Whether one rationale (or reviewed feedback) is accepted, by the rule in the module
    docstring. ``answer_correct`` is the grader's verdict on its final answer (None: could not be
    read); ``answer`` and ``gold`` only make the reason of a failed answer check more telling."""
    one = pl.DataFrame({"score": [[s.value for s in scores]], "score_status": [[s.status.value for s in scores]],
                        "answer_correct": [answer_correct], "answer": [answer], "gold": [gold]},
                       schema={"score": pl.List(pl.Int64), "score_status": pl.List(pl.String),
                               "answer_correct": pl.Boolean, "answer": pl.String, "gold": pl.String})
    row = decide_all(one, policy).row(0, named=True)
    return Decision(row["accepted"], row["mean_score"], row["valid"], row["reason"])


def decide_all(frame: pl.DataFrame, policy: Policy, checked: pl.Expr = pl.lit(True)) -> pl.DataFrame:
    """``decide`` for every row of ``frame``, which holds per rationale: ``score`` and
    ``score_status`` (lists, one item per review, as in ``Score``: a value exactly when OK; null
    when nobody reviewed it), ``answer_correct``, ``answer`` and ``gold``. The policy's answer check
    applies only where ``checked`` is true. Adds the columns ``accepted``, ``mean_score``, ``valid``
    and ``reason``, as in ``Decision``."""
    ok = pl.col("score_status").list.count_matches(ScoreStatus.OK.value).fill_null(0).cast(pl.Int64)
    total = pl.col("score").cast(pl.List(pl.Int64)).list.sum().fill_null(0)   # a list's sum skips nulls
    if policy.invalid_as is not None:
        invalid = pl.col("score_status").list.len().fill_null(0).cast(pl.Int64) - ok
        ok, total = ok + invalid, total + policy.invalid_as * invalid
    frame = frame.with_columns(valid=ok, mean_score=pl.when(ok > 0).then(total / ok))
    # Python formats the means in reasons, as it always did (ties like 2.125 round its way); there are few.
    shown = {m: f"{m:.2f}" for m in frame["mean_score"].unique().drop_nulls()}
    valid, correct = pl.col("valid"), pl.col("answer_correct")
    check = checked & pl.lit(policy.answer_check)
    reason = (
        pl.when(check & correct.is_null()).then(pl.lit("answer check impossible (final answer unreadable)"))
        .when(check & ~correct).then(pl.format("answer check failed (answer {} != gold {})", "answer", "gold")
                                     .fill_null(pl.lit("answer check failed")))
        .when(valid < policy.min_reviews).then(pl.format(f"too few valid reviews ({{}} < {policy.min_reviews})", valid))
        .when(pl.col("mean_score") <= policy.threshold).then(
            pl.format(f"mean {{}} <= {policy.threshold}",
                      pl.col("mean_score").replace_strict(shown, default=None, return_dtype=pl.String)))
        .otherwise(pl.lit("accepted")))
    return frame.with_columns(reason=reason).with_columns(accepted=pl.col("reason") == "accepted")
