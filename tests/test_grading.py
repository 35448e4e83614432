"""Answer graders on model outputs of the kind the teachers and the student
write. Each case pins the exact extracted answer and the verdict."""
from __future__ import annotations

import pytest

from mapd.batch.tasks import TASKS, Graded, Question, Verdict
from mapd.batch.tasks.grading import (canonical_number, extract_choice, grade_choice,
                                 grade_number, grade_yesno)

C, W, U = Verdict.CORRECT, Verdict.WRONG, Verdict.UNPARSEABLE
# Graded.how: read after an explicit final-answer marker, or guessed from the text.
M, F = "marker", "fallback"

# (completion, gold, extracted answer, verdict, how)
GSM8K_CASES = [
    ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day at the "
     "farmer\u2019s market.\n#### 18", "18", "18", C, M),
    ("Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n"
     "The answer is 72.", "72", "72", C, M),
    ("Weng earns 12/60 = $0.2 per minute. Working 50 minutes, she earned 0.2 x 50 = $10. "
     "The answer is $10.", "10", "10", C, M),
    ("The bakery's total revenue is $1,080.00.", "1080", "1080", C, F),
    ("60 + 1,020 = 1,080\n#### 1,080", "1080", "1080", C, M),
    ("Final Answer: The final answer is $\\boxed{1,080}$. I hope it is correct.",
     "1080", "1080", C, M),
    ("\\boxed{18}", "18", "18", C, M),
    ("So she makes \\boxed{\\$18} per day.", "18", "18", C, M),
    ("The answer is 18 dollars.", "18", "18", C, M),
    ("The answer is: 18.", "18", "18", C, M),
    ("He spends 3 + 4 = 7 dollars more than he earns, so the change in his savings is -7. "
     "The answer is -7.", "-7", "-7", C, M),
    ("The temperature fell from 5 to \u22123 degrees, a change of \u22128 degrees.",
     "-8", "-8", C, F),
    ("5 - 3 = 2 apples remain.", "2", "2", C, F),
    ("The answer is 51.0", "51", "51", C, M),
    ("Half of the pizza is 0.50 of it, so the answer is 0.5", "0.5", "0.5", C, M),
    ("The price went up by 10/40 = 25%. The answer is 25%.", "25", "25", C, M),
    ("16 - 3 - 4 = 8 eggs are left, and 8 * 2 = 16. The answer is 16.", "18", "16", W, M),
    ("I'm sorry, but I can't solve this problem without more information.", "18", None, U, None),
    ("", "18", None, U, None),
    ("Answer: 13 eggs remain after breakfast and 9 are sold for $18.", "18", "13", W, M),
    ("Answer: 18\n\nQuestion: Tom has 5 apples and buys 7 more. How many does he have?",
     "18", "18", C, M),
    ("The answer is 72.\n\nQ: A shop has 10 shirts and sells 4.\nA: 10 - 4 = 6. "
     "The answer is 6.", "72", "6", W, M),
    ("So she has 3 + 4 = 7 cookies left.\n#### 7.", "7", "7", C, M),
    ("Total = 1,000,000 + 250,000 = 1,250,000 dollars", "1250000", "1250000", C, F),
    ("Each friend gets $\\frac{3}{4}$ of a cake. The final answer is $\\frac{3}{4}$.",
     "0.75", "0.75", C, M),
    ("她每天赚 9 \u00d7 2 = 18 美元。答案是 18。", "18", "18", C, M),
    ("Therefore, she makes **$18** per day.\n\n**Answer:** 18", "18", "18", C, M),
    ("The answer is eighteen.", "18", "18", C, M),
    ("One trip takes 2.5 hours, so 4 trips take 2.5 \u00d7 4 = 10 hours.\nThe answer is 10",
     "10", "10", C, M),
    ("3 boxes of 12 make 3*12=36 pencils, and 36/4=9 per friend.\n9", "9", "9", C, F),
    ("#### $ 1,234.50", "1234.5", "1234.5", C, M),
    ("The answer is \\(\\boxed{42}\\)", "42", "42", C, M),
    ("x = 5, so 2x = 10 and the answer is 10 .", "10", "10", C, M),
    ("He owes 5 dollars. Answer: -$5", "-5", "-5", C, M),
    ("The answer is 3 hours and 20 minutes.", "200", "3", W, M),
    ("The answer is 1000000", "1,000,000", "1000000", C, M),
    ("She keeps 16 - 3 - 4 = 9 eggs.\nThe answer is 9 * 2 = 18.", "18", "18", C, M),
    ("A half-full cup holds half of 1 cup. The answer is .5", "0.5", "0.5", C, M),
    ("The answer is $3 \\times 6 = 18$.", "18", "18", C, M),
]

SVAMP_CASES = [
    ("76 - 25 = 51\nThe answer is 51.", "51", "51", C, M),
    ("The answer is 51.0", "51", "51", C, M),
    ("Dan had 3 + 2 = 5 dollars before buying the candy bar.\n#### 5", "5", "5", C, M),
    ("Answer: 1", "1", "1", C, M),
    ("He gave away 14 - 8 = 6 marbles.", "6", "6", C, F),
    ("He gave away 14 - 8 = 6 marbles.", "8", "6", W, F),
    ("There were 9 birds, then 6 more came: 9 + 6 = 15 birds. So the answer is 15 birds.",
     "15", "15", C, M),
    ("8 - 15 = -7, so there are 7 more birds than nests. The answer is 7.", "7", "7", C, M),
    ("Each box has 48 / 6 = 8 pencils.\n\\boxed{8}", "8", "8", C, M),
    ("\\boxed{8.0}", "8", "8", C, M),
    ("She baked $\\boxed{12}$ cookies in total.", "12", "12", C, M),
    ("Let x be the number of cakes. Then x + 5 = 12, so x = 7.", "7", "7", C, F),
    ("There are 1,200 people and 1,200 \u00f7 4 = 300 per bus.\n#### 300", "300", "300", C, M),
    ("The cost is 76 dollars minus 25 dollars.", "51", "25", W, F),
    ("Paco ate 5 sweet and 2 salty cookies.\nAnswer: 3 more sweet cookies than salty ones",
     "3", "3", C, M),
    ("Answer: He had 19 books left.", "19", "19", C, M),
    ("He needs 35 - 17 = 18 more stamps. The answer is 18\n", "18", "18", C, M),
    ("The answer is (18).", "18", "18", C, M),
    ("I cannot determine the answer without more information.", "18", None, U, None),
    ("   \n  ", "4", None, U, None),
    ("Answer:", "4", None, U, None),
    ("They collected 2 times as many: 2 x 12 = 24 shells. The answer is 24.", "24", "24", C, M),
    ("The answer is 24 shells, not 12.", "24", "24", C, M),
    ("Each half weighs 7 / 2 = 3.5 kg. The answer is 3.5", "3.5", "3.5", C, M),
    ("She has 45 - 18 = 27 stickers left. The final answer is 27", "27", "27", C, M),
    ("There are 1{,}024 pages. The answer is $1{,}024$.", "1024", "1024", C, M),
    ("The answer is \u22124", "-4", "-4", C, M),
    ("Shirley sold 54 boxes, 6 boxes per case: 54/6 = 9 cases.\n"
     "Therefore, the answer is: **9**", "9", "9", C, M),
    ("So the answer is 9 cases", "10", "9", W, M),
    ("R\u00e9sultat : 12 pommes. The answer is 12.", "12", "12", C, M),
    ("12 + 8 = 20\n20 - 5 = 15\n15", "15", "15", C, F),
    ("The answer is \\boxed{}. Counting again, the total is 15.", "15", "15", C, F),
    ("the answer is 7 apples and 3 oranges", "7", "7", C, M),
    ("He read 20% of 40 pages, i.e. 8 pages. The answer is 8 pages.", "8", "8", C, M),
    ("Answer: 2 x 12 = 24 shells", "24", "24", C, M),
    ("The answer is 24 (= 2 * 12)", "24", "24", C, M),
]

STRATEGYQA_CASES = [
    ("Genghis Khan had 16 children while Julius Caesar had 3. So the answer is yes.",
     "yes", "yes", C, M),
    ("Yes. Genghis Khan has millions of living descendants.", "yes", "yes", C, F),
    ("No. Albany, Georgia has about 70,000 residents and is shrinking.", "no", "no", C, F),
    ("No, it would not.", "no", "no", C, F),
    ("yes", "yes", "yes", C, F),
    ("NO", "no", "no", C, F),
    ("True", "yes", "yes", C, F),
    ("False. Pi is not a whole number, so it cannot be a number of children.", "no", "no", C, F),
    ("There is no evidence that he visited Mars. However, the book says he did. "
     "The answer is yes.", "no", "yes", W, M),
    ("There is no evidence that he visited Mars, so this seems unlikely.", "no", None, U, None),
    ("No evidence suggests that cats can read.", "no", None, U, None),
    ("Answer: No", "no", "no", C, M),
    ("#### yes", "yes", "yes", C, M),
    ("\\boxed{yes}", "yes", "yes", C, M),
    ("The final answer is $\\boxed{\\text{No}}$.", "no", "no", C, M),
    ("The answer is: **Yes**", "yes", "yes", C, M),
    ("**Yes**, the Great Wall is longer than the distance from Paris to Rome.",
     "yes", "yes", C, F),
    ("Yes, without a doubt. Wait, the Nile is longer. The answer is no.", "no", "no", C, M),
    ("I think so. The answer is yes", "no", "yes", W, M),
    ("It depends on the definition of a sandwich.", "yes", None, U, None),
    ("", "yes", None, U, None),
    ("Maybe.", "no", None, U, None),
    ("The answer is not clear from the facts given.", "no", None, U, None),
    ("Yesterday's paper said the bridge is closed, so the answer is no", "no", "no", C, M),
    ("Nope, that is impossible.", "no", None, U, None),
    ("S\u00ed. La respuesta: the answer is yes.", "yes", "yes", C, M),
    ("Oui \u2014 the answer is yes.", "yes", "yes", C, M),
    ("True love is rare, and the answer is no.", "no", "no", C, M),
    ("True love is rare.", "yes", None, U, None),
    ("Answer: False", "yes", "no", W, M),
    ("  \n  No\nBecause the city has fewer than 100,000 people.", "no", "no", C, F),
    ("Yes it would, since a llama can carry about 30 kg.", "yes", "yes", C, F),
    ("No one knows for sure, but probably yes.", "yes", None, U, None),
    ("The answer is yes.\n\nQ: Could a dog drive a car?\nA: No. The answer is no.",
     "yes", "no", W, M),
    ("\u2014 No.", "no", None, U, None),
    ("The answer is \"No\".", "no", "no", C, M),
]

PLACES = ("Shannan", "Jiangnan", "Shanbei", "Jiangbei")
CLAIMS = ("Every student passed the exam.", "Some students did not study.",
          "A teacher failed the exam.", "No student failed the exam.")

# (completion, options, gold, extracted answer, verdict, how)
LOGIQA_CASES = [
    ("The answer is (C).", CLAIMS, "C", "C", C, M),
    ("The answer is C", CLAIMS, "C", "C", C, M),
    ("Answer: B", CLAIMS, "C", "B", W, M),
    ("#### D", CLAIMS, "D", "D", C, M),
    ("\\boxed{A}", CLAIMS, "A", "A", C, M),
    ("$\\boxed{\\text{B}}$", CLAIMS, "B", "B", C, M),
    ("The correct option is C.", PLACES, "C", "C", C, M),
    ("Option C is correct because the context says the team is from the south.",
     PLACES, "C", "C", C, M),
    ("B.", CLAIMS, "B", "B", C, F),
    ("(B)", CLAIMS, "B", "B", C, F),
    ("B) Some students did not study.", CLAIMS, "B", "B", C, F),
    ("b", CLAIMS, "B", "B", C, F),
    ("answer: d", CLAIMS, "D", "D", C, M),
    ("A cat is not a dog, so the first claim fails. The answer is D.", CLAIMS, "D", "D", C, M),
    ("A cat is a mammal.", CLAIMS, "A", None, U, None),
    ("A teacher failed the exam.", CLAIMS, "C", "C", C, F),
    ("Based on the passage, the conclusion is that some students did not study.",
     CLAIMS, "B", "B", C, F),
    ("The champion team is from Jiangbei.", PLACES, "D", "D", C, F),
    ("Either Shannan or Jiangnan could have won.", PLACES, "A", None, U, None),
    ("I am not sure.", PLACES, "A", None, U, None),
    ("", PLACES, "A", None, U, None),
    ("The answer is A because the premise rules out the others.", CLAIMS, "A", "A", C, M),
    ("The answer is a good question in itself.", CLAIMS, "A", None, U, None),
    ("A. Every student passed the exam.", CLAIMS, "A", "A", C, F),
    ("**Answer: (D)**", CLAIMS, "D", "D", C, M),
    ("Let's check each option. Option A is wrong because not everyone passed. "
     "Option B is also wrong. Therefore the answer is option D.", CLAIMS, "D", "D", C, M),
    ("答案是 C。因为题干说明了这一点。", PLACES, "C", "C", C, M),
    ("The answer is C\u3002", PLACES, "C", "C", C, M),
    ("Among the choices, C seems best.", PLACES, "C", None, U, None),
    ("The best answer is D: No student failed the exam.", CLAIMS, "D", "D", C, M),
    ("Answer: c) Shanbei", PLACES, "C", "C", C, M),
    ("The answer is (e).", PLACES, "A", None, U, None),
    ("The answer is B.\n\nQuestion 2: Which city is the capital?\nThe answer is A.",
     PLACES, "B", "A", W, M),
    ("D", PLACES, "D", "D", C, F),
    ("I choose B because some students did not study.", CLAIMS, "B", "B", C, F),
    ("Final answer: [B]", PLACES, "B", "B", C, M),
    ("The correct choice is Jiangnan.", PLACES, "B", "B", C, F),
    ("A student who skipped class failed.", CLAIMS, "C", None, U, None),
    ("Answer: A, since every student passed.", CLAIMS, "A", "A", C, M),
    ("Option A is wrong because not everyone passed.", CLAIMS, "D", None, U, None),
    ("A is incorrect, while D fits the passage.", CLAIMS, "D", None, U, None),
    ("Option A: wrong.\nOption B: wrong.\nOption C: wrong.\nSo the answer is D.",
     CLAIMS, "D", "D", C, M),
    ("(A) and (B) both sound plausible, but the answer is (b).", CLAIMS, "B", "B", C, M),
    ("**C**\n\nThe passage says the team is from the north bank.", PLACES, "C", "C", C, F),
]


# Readings that issue #13 fixed, and texts that still need the fallback:
# (completion, extracted answer, how). Hedges are unparseable, never their
# first alternative.
NUMBER_READINGS = [
    # Fractions and mixed numbers, as typed; a date is no fraction.
    ("The answer is 5/2", "2.5", M),
    ("The answer is 1 1/2 cups.", "1.5", M),
    ("Answer: -1 1/2", "-1.5", M),
    ("The answer is $\\dfrac{5}{2}$.", "2.5", M),
    ("He shares 36 pencils among 4 friends: 36/4", "9", F),
    ("The answer is 3/5/2024", None, None),
    ("On 3/5/2024 she bought 12 eggs.", "12", F),
    # The result of an "=" chain right after a marker.
    ("The answer is 12^2 = 144", "144", M),
    ("The answer is 50% of 80 = 40", "40", M),
    ("The answer is \\(\\frac{1}{2} \\times 80 = 40\\).", "40", M),
    ("The answer is 9 * 2 = 18 dollars, as x = 3 in the second step", "18", M),
    # A number ruled out.
    ("The answer is not 5, it is 6", "6", M),
    ("The answer is not 5 but 6.", "6", M),
    ("The answer is **not** 5; it is 7", "7", M),
    ("The answer is not 5.", None, None),
    # Hedges; the same number twice is none.
    ("The answer is 5 or 6", None, None),
    ("The answer is either 5 or 6.", None, None),
    ("The answer is seven or eight.", None, None),
    ("The answer is 5. Hmm, the answer is 5, or maybe 6.", None, None),
    ("The answer is 18, or $18 in total.", "18", M),
    # Small numbers in words, only right after a marker.
    ("The answer is seven", "7", M),
    ("The answer is: **twenty-five** apples.", "25", M),
    ("The answer is ninety nine.", "99", M),
    ("The answer is zero", "0", M),
    ("The answer is nine hundred.", None, None),  # beyond the words read; never 9
    ("Seven dwarves met twelve elves.", None, None),
    # No marker: the last number is a guess, and can be wrong.
    ("9 groups of 2 bananas each", "2", F),
    ("She earns $6 per day in the first 20 days", "20", F),
]

YESNO_READINGS = [
    ("I would say yes", "yes", M),
    ("I'd say no, since sloths are slow.", "no", M),
    ('Weighing it all, the answer to the question is "false."', "no", M),
    ("Conclusion: False.", "no", M),
    ("Paris is in France, not Spain. The statement is false", "no", M),
    ("So the claim is not true.", "no", M),
    # "... is false" before the closing sentence is no verdict.
    ("The claim is false for cats. For dogs it holds, so yes.", None, None),
    ("The answer is yes and no", None, None),
    ("Yes/No", None, None),
    ("yes and no, it depends on the season.", None, None),
    ("The answer is no. On reflection, the answer is yes or no.", None, None),
    ("Yes and no one doubts it.", "yes", F),
]

CHOICE_READINGS = [
    ("(A) is incorrect. (B) is incorrect. (C) is correct.", "C", M),
    ("A is wrong. B is wrong. C is correct. D is wrong.", "C", M),
    ("Option (D) is the correct answer.", "D", M),
    ("The answer is B or C", None, None),
    ("The answer is A and B.", None, None),
    ("B or C", None, None),
    ("A and B", None, None),
    ("(A) and (B) are both plausible.", None, None),
    # Not a hedge but a walk through the options, which ends on option C's text.
    ("A and B are both wrong: a teacher failed the exam.", "C", F),
    ("The answer is B or a similar option.", "B", M),
    ("The answer is C, and A is wrong.", "C", M),
]


def _ids(cases):
    return [f"{i:02d}" for i in range(len(cases))]


@pytest.mark.parametrize("completion, gold, answer, verdict, how", GSM8K_CASES,
                         ids=_ids(GSM8K_CASES))
def test_gsm8k(completion, gold, answer, verdict, how):
    q = Question("gsm8k-test-x", "question", gold)
    assert TASKS["gsm8k"].grade(completion, q) == Graded(answer, verdict, how)


@pytest.mark.parametrize("completion, gold, answer, verdict, how", SVAMP_CASES,
                         ids=_ids(SVAMP_CASES))
def test_svamp(completion, gold, answer, verdict, how):
    q = Question("chal-x", "question", gold)
    assert TASKS["svamp"].grade(completion, q) == Graded(answer, verdict, how)


@pytest.mark.parametrize("completion, gold, answer, verdict, how", STRATEGYQA_CASES,
                         ids=_ids(STRATEGYQA_CASES))
def test_strategyqa(completion, gold, answer, verdict, how):
    q = Question("sqa-x", "question?", gold)
    assert TASKS["strategyqa"].grade(completion, q) == Graded(answer, verdict, how)


@pytest.mark.parametrize("completion, options, gold, answer, verdict, how", LOGIQA_CASES,
                         ids=_ids(LOGIQA_CASES))
def test_logiqa(completion, options, gold, answer, verdict, how):
    q = Question("logiqa-test-x", "context", gold, options)
    assert TASKS["logiqa"].grade(completion, q) == Graded(answer, verdict, how)


def _expected(answer, how):
    """What grading against gold = the answer itself gives."""
    return Graded(answer, U if answer is None else C, how)


@pytest.mark.parametrize("completion, answer, how", NUMBER_READINGS, ids=_ids(NUMBER_READINGS))
def test_number_readings(completion, answer, how):
    assert grade_number(completion, answer or "0") == _expected(answer, how)


@pytest.mark.parametrize("completion, answer, how", YESNO_READINGS, ids=_ids(YESNO_READINGS))
def test_yesno_readings(completion, answer, how):
    assert grade_yesno(completion, answer or "yes") == _expected(answer, how)


@pytest.mark.parametrize("completion, answer, how", CHOICE_READINGS, ids=_ids(CHOICE_READINGS))
def test_choice_readings(completion, answer, how):
    assert grade_choice(completion, answer or "A", CLAIMS) == _expected(answer, how)


# Inputs that once took minutes, as the text after each marker was read to
# the end; they must simply come back, unparseable.
@pytest.mark.parametrize("completion", [
    "\\boxed{" * 20_000,
    "The answer is " * 20_000,
    "The answer is " + "9" * 100_000,
    "Answer:" + " " * 100_000 + "x",
], ids=["unclosed-boxes", "markers", "digits", "blanks"])
def test_pathological_inputs_are_unparseable(completion):
    unparseable = Graded(None, U, None)
    assert grade_number(completion, "1") == unparseable
    assert grade_yesno(completion, "yes") == unparseable
    assert grade_choice(completion, "A") == unparseable


def test_case_counts():
    for cases in (GSM8K_CASES, SVAMP_CASES, STRATEGYQA_CASES, LOGIQA_CASES):
        assert len(cases) >= 30


# ------------------------------------------------------------ pure helpers

@pytest.mark.parametrize("text, expected", [
    ("51.0", "51"), ("1,080", "1080"), ("-7", "-7"), ("0.50", "0.5"),
    ("100", "100"), ("-0.0", "0"), ("\\frac{1}{3}", "0.333333333"), ("5/2", "2.5"),
    ("1 1/2", "1.5"),
])
def test_canonical_number(text, expected):
    assert canonical_number(text) == expected


def test_canonical_number_rejects_text():
    with pytest.raises(ValueError):
        canonical_number("eighteen")


def test_tolerance_is_absolute():
    assert grade_number("The answer is 0.3333333", "0.333333333").verdict is C
    assert grade_number("The answer is 0.33", "0.333333333").verdict is W


def test_graders_are_usable_without_a_task():
    assert grade_yesno("Yes.", "yes").verdict is C
    assert grade_choice("(b)", "B").answer == "B"
    # Without options only the four letters are known, so no option-text fallback.
    assert extract_choice("Some students did not study.") is None
