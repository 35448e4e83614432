"""The committee's score parser and acceptance rule, on real-looking reviews and hand-computed cases."""
import dataclasses
import random

import polars as pl
import pytest

from mapd.batch.committee import (PRESETS, Decision, Policy, Score, ScoreStatus, decide, decide_all, parse_score,
                                  policy_from)

OK, NONE, OUT = ScoreStatus.OK, ScoreStatus.NO_SCORE, ScoreStatus.OUT_OF_RANGE

# (id, review text, value, status)
REVIEWS = [
    # The asked-for format, and its variants.
    ("plain", "The solution is correct and every step is explained clearly.\n[5]", 5, OK),
    ("spaces", "The reasoning is sound but terse.\n[ 4 ]", 4, OK),
    ("fraction in bracket", "Correct, though the second step could be clearer.\n[4/5]", 4, OK),
    ("spaced fraction in bracket", "Mostly right.\n[ 3 / 5 ]", 3, OK),
    ("double brackets", "A correct and complete solution.\n[[5]]", 5, OK),
    ("decimal integer", "Correct final answer, well explained.\n[4.0]", 4, OK),
    ("bold bracket", "The facts used are true and the chain of reasoning holds.\n\n**[4]**", 4, OK),
    ("bold inside bracket", "Good.\n[**4**]", 4, OK),
    ("final score label", "The passage is read correctly and options B-D are ruled out.\nFinal score: [5]", 5, OK),
    ("label inside bracket", "Clear and correct.\n[Score: 4]", 4, OK),
    ("out of inside bracket", "Reasonable.\n[3 out of 5]", 3, OK),
    ("inline at end", "The answer is correct and the explanation would help a student [4]", 4, OK),
    ("trailing period", "Everything checks out. [5].", 5, OK),
    ("windows newlines", "Correct.\r\n\r\n[4]\r\n", 4, OK),
    # Other score forms, when no bracket is given.
    ("n/5", "The solution reaches 18 correctly but skips the unit conversion.\n4/5", 4, OK),
    ("n out of 5", "I would give this solution 3 out of 5.", 3, OK),
    ("score colon", "The student-facing explanation is weak.\nScore: 2", 2, OK),
    ("score of", "Given the arithmetic slip in the last line, I give it a score of 2.", 2, OK),
    ("rating", "Rating: 4", 4, OK),
    ("markdown label", "The inference from premise 2 is invalid.\n\n**Score:** 1", 1, OK),
    ("markdown label bold word", "**Score**: 3", 3, OK),
    ("announced scale", "Score (1-5): 4", 4, OK),
    ("bare number last line", "Correct and complete.\n\n5", 5, OK),
    ("bold bare number", "Correct and complete.\n**4**", 4, OK),
    # Reasoning that mentions other numbers.
    ("arithmetic before score",
     "The student computed 12 * 3 = 36, then 36 - 8 = 28, which matches the gold answer 28.\n[4]", 4, OK),
    ("step reference then label", "Step [2] is wrong: 15% of 80 is 12, not 10.\nScore: 3", 3, OK),
    ("step reference then bracket on last line", "Step [2] is wrong, step [3] follows from it.\n[2]", 2, OK),
    ("label beats a cited step on the same line", "Score: 3 (see step [2])", 3, OK),
    ("several brackets, last line wins", "I considered [3] at first, but the fix in step 4 is right.\n[4]", 4, OK),
    ("fraction of a quantity is not a score",
     "She spends 2/5 of her 40 dollars, 16 dollars, and the solution says so.\nScore: 5", 5, OK),
    ("score then arithmetic fraction",
     "Score: 4. The student computed (3/5) * 20 = 12 correctly but misread the question.", 4, OK),
    ("arithmetic fraction after the score line",
     "Score: [4]\nNote that the final answer 12/5 should be written as 2.4.", 4, OK),
    ("scored is not a label", "The team scored 36 points in total; the solution gets this right. [5]", 5, OK),
    ("number after the bracket", "A good answer. [4]\nIt uses 3 facts, all true.", 4, OK),
    # Trailing text after the score: the whole review is searched when the last line has none.
    ("trailing remark", "The reasoning is correct.\n[4]\n\nI hope this review helps!", 4, OK),
    ("trailing remark after label", "Step [2] is wrong.\nScore: 3\nLet me know if you need more detail.", 3, OK),
    ("trailing code fence", "Fine.\n[3]\n```", 3, OK),
    # Out of range: a number was given, but it is not a score in 1..5.
    ("zero", "The answer is wrong and the reasoning is incoherent.\n[0]", None, OUT),
    ("six", "Perfect, better than perfect!\n[6]", None, OUT),
    ("ten", "Excellent solution.\n[10]", None, OUT),
    ("other scale", "Solid work.\n[8/10]", None, OUT),
    ("other scale label", "Score: 8/10", None, OUT),
    ("half point", "Between a 4 and a 5.\n[4.5]", None, OUT),
    ("negative", "Useless.\n[-1]", None, OUT),
    ("bare number out of range", "The total is:\n36", None, OUT),
    # No score at all.
    ("empty", "", None, NONE),
    ("whitespace", "  \n\n \t", None, NONE),
    ("no number", "The solution is correct and clearly explained.", None, NONE),
    ("cut off mid-sentence", "The student multiplied 12 by 3 and got", None, NONE),
    ("cut off after a number", "First, 12 * 3 = 36. Then the student subtracts 8 and gets 28, so the", None, NONE),
    ("score range", "Hard to decide between the two.\nScore: 3-4", None, NONE),
    ("range only", "I would score this somewhere in [3-4] range, hard to say", None, NONE),
    ("citation-like text", "According to [the passage], the premise holds.", None, NONE),
    ("arithmetic fraction only", "The answer 12/5 = 2.4 is correct.", None, NONE),
    ("fraction of a quantity only", "The student took 3/5 of 40.", None, NONE),
    # Unicode.
    ("full-width", "解答は正しい。\n［４］", 4, OK),
    ("lenticular brackets", "推理正确，步骤清晰。\n【5】", 5, OK),
    ("arabic-indic digit", "الإجابة صحيحة.\n[٤]", 4, OK),
    ("accents around", "Très bien expliqué — réponse correcte ✓\n[5]", 5, OK),
]


@pytest.mark.parametrize("text,value,status", [c[1:] for c in REVIEWS], ids=[c[0] for c in REVIEWS])
def test_parse_score(text, value, status):
    assert parse_score(text) == Score(value, status)


def test_parse_score_other_scale():
    assert parse_score("Good.\n[8/10]", low=1, high=10) == Score(8, OK)
    assert parse_score("Good.\n[8]", low=1, high=10) == Score(8, OK)
    assert parse_score("Good.\n[4/5]", low=1, high=10) == Score(None, OUT)


def test_score_value_matches_status():
    with pytest.raises(ValueError):
        Score(None, OK)
    with pytest.raises(ValueError):
        Score(3, OUT)


def ok(*values):
    return [Score(v, OK) for v in values]


NO, BAD = Score(None, NONE), Score(None, OUT)
PAPER = PRESETS["paper"]


@pytest.mark.parametrize("scores,accepted,mean,valid,reason", [
    (ok(4, 3), True, 3.5, 2, "accepted"),
    (ok(3, 3), False, 3.0, 2, "mean 3.00 <= 3.0"),
    (ok(2, 4), False, 3.0, 2, "mean 3.00 <= 3.0"),
    (ok(5) + [NO], True, 5.0, 1, "accepted"),
    ([], False, None, 0, "too few valid reviews (0 < 1)"),
    ([NO, BAD], False, None, 0, "too few valid reviews (0 < 1)"),
    (ok(1, 5, 4), True, 10 / 3, 3, "accepted"),
    (ok(2) + [BAD], False, 2.0, 1, "mean 2.00 <= 3.0"),
])
def test_paper_preset(scores, accepted, mean, valid, reason):
    # The paper has no answer check: a wrong or unreadable final answer changes nothing.
    for correct in (True, False, None):
        d = decide(scores, PAPER, answer_correct=correct)
        assert d == Decision(accepted, pytest.approx(mean) if mean else None, valid, reason)


def test_strictly_greater_than_threshold():
    assert decide(ok(3), PAPER) == Decision(False, 3.0, 1, "mean 3.00 <= 3.0")
    d = decide(ok(*[3] * 99, 4), PAPER)   # mean 301/100 = 3.01
    assert d.accepted and d.mean == pytest.approx(3.01) and d.valid == 100
    assert decide(ok(3), Policy(threshold=2.99, answer_check=False)).accepted
    assert decide(ok(4, 4, 3, 4), Policy(threshold=3.75, answer_check=False)) == \
        Decision(False, 3.75, 4, "mean 3.75 <= 3.75")


def test_mean_in_a_reason_is_rounded_as_python_formats_it():
    # 17/8 = 2.125 exactly: Python's format rounds the tie to even, "2.12", not "2.13".
    assert decide(ok(3, 3, 3, 2, 2, 2, 1, 1), PAPER).reason == "mean 2.12 <= 3.0"
    assert decide(ok(3, 3, 3, 3, 2, 2, 2, 1), PAPER).reason == "mean 2.38 <= 3.0"   # 19/8 = 2.375


@pytest.mark.parametrize("policy", [PRESETS["default"], PAPER, Policy(threshold=2.5, min_reviews=2, invalid_as=1)])
def test_a_frame_is_decided_row_by_row(policy):
    """decide_all over many random rationales at once, some not answer-checked or never reviewed,
    gives each row what decide gives it alone."""
    rng = random.Random(0)
    pool = ok(1, 2, 3, 4, 5) + [NO, BAD]
    cases = [([rng.choice(pool) for _ in range(rng.randrange(5))], rng.choice([True, False, None]),
              rng.choice(["12", None]), rng.random() < 0.7, rng.random() < 0.1) for _ in range(120)]
    frame = pl.DataFrame(
        [{"score": None if unreviewed else [s.value for s in scores],
          "score_status": None if unreviewed else [s.status.value for s in scores],
          "answer_correct": correct, "answer": answer, "gold": "14", "checked": checked}
         for scores, correct, answer, checked, unreviewed in cases],
        schema={"score": pl.List(pl.Int8), "score_status": pl.List(pl.String), "answer_correct": pl.Boolean,
                "answer": pl.String, "gold": pl.String, "checked": pl.Boolean})
    decided = decide_all(frame, policy, pl.col("checked"))
    for (scores, correct, answer, checked, unreviewed), row in zip(cases, decided.iter_rows(named=True)):
        policy_here = dataclasses.replace(policy, answer_check=policy.answer_check and checked)
        alone = decide([] if unreviewed else scores, policy_here, correct, answer=answer, gold="14")
        assert Decision(row["accepted"], row["mean_score"], row["valid"], row["reason"]) == alone


def test_invalid_scores_dropped_or_counted():
    scores = ok(5, 4) + [NO, BAD]
    assert decide(scores, PAPER) == Decision(True, 4.5, 2, "accepted")
    ones = dataclasses.replace(PAPER, invalid_as=1)
    assert decide(scores, ones) == Decision(False, 2.75, 4, "mean 2.75 <= 3.0")
    assert decide([NO], ones) == Decision(False, 1.0, 1, "mean 1.00 <= 3.0")
    threes = dataclasses.replace(PAPER, invalid_as=3)
    assert decide(ok(5) + [NO], threes) == Decision(True, 4.0, 2, "accepted")


def test_min_reviews():
    two = dataclasses.replace(PAPER, min_reviews=2)
    assert decide(ok(5) + [NO], two) == Decision(False, 5.0, 1, "too few valid reviews (1 < 2)")
    assert decide(ok(5, 4), two) == Decision(True, 4.5, 2, "accepted")
    # An invalid score counted as a score counts as a review.
    assert decide(ok(5) + [NO], dataclasses.replace(two, invalid_as=2)) == Decision(True, 3.5, 2, "accepted")


def test_answer_check():
    default = PRESETS["default"]
    assert default.answer_check
    assert decide(ok(5, 5), default, answer_correct=True) == Decision(True, 5.0, 2, "accepted")
    # The mean is still reported, so what the check catches can be counted.
    assert decide(ok(5, 5), default, answer_correct=False) == Decision(False, 5.0, 2, "answer check failed")
    assert decide(ok(5, 5), default, answer_correct=False, answer="12", gold="14") == \
        Decision(False, 5.0, 2, "answer check failed (answer 12 != gold 14)")
    assert decide(ok(5, 5), default) == \
        Decision(False, 5.0, 2, "answer check impossible (final answer unreadable)")
    # The answer check comes before the review rules.
    assert decide([], default, answer_correct=False).reason == "answer check failed"
    assert decide(ok(2, 3), default, answer_correct=True).reason == "mean 2.50 <= 3.0"
    off = dataclasses.replace(default, answer_check=False)
    assert decide(ok(5, 5), off, answer_correct=False) == Decision(True, 5.0, 2, "accepted")
    assert decide(ok(5, 5), off, answer_correct=None) == Decision(True, 5.0, 2, "accepted")


def test_presets():
    assert PRESETS["paper"] == Policy(threshold=3.0, min_reviews=1, answer_check=False,
                                      review_feedback=False, invalid_as=None)
    assert PRESETS["default"] == Policy()


def test_policy_from():
    assert policy_from("paper") == PAPER
    assert policy_from() == Policy()
    assert policy_from("paper", {"min_reviews": 2, "review_feedback": True}) == \
        Policy(answer_check=False, min_reviews=2, review_feedback=True)
    # 3 and 3.0 are one policy.
    assert policy_from("default", {"threshold": 3}) == Policy()
    assert isinstance(policy_from("default", {"threshold": 4}).threshold, float)
    with pytest.raises(ValueError, match="unknown policy preset 'papper'; choose one of paper, default"):
        policy_from("papper")
    with pytest.raises(ValueError, match="unknown policy field.*treshold"):
        policy_from("default", {"treshold": 3.5})


@pytest.mark.parametrize("overrides", [
    {"threshold": "3.5"}, {"threshold": True}, {"min_reviews": 0}, {"min_reviews": 1.5},
    {"answer_check": "yes"}, {"review_feedback": 1}, {"invalid_as": 0}, {"invalid_as": 6},
    {"invalid_as": 2.5}, {"invalid_as": True},
])
def test_policy_rejects_bad_values(overrides):
    with pytest.raises(ValueError):
        policy_from("default", overrides)
