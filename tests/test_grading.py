"""Answer graders on model outputs of the kind the teachers and the student
write. Each case pins the exact extracted answer and the verdict."""
from __future__ import annotations

import pytest

from mapd.batch.tasks import TASKS, Graded, Question, Verdict
from mapd.batch.tasks.grading import (canonical_number, extract_choice, grade_choice,
                                 grade_number, grade_yesno)

C, W, U = Verdict.CORRECT, Verdict.WRONG, Verdict.UNPARSEABLE

# (completion, gold, extracted answer, verdict)
GSM8K_CASES = [
    ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day at the "
     "farmer\u2019s market.\n#### 18", "18", "18", C),
    ("Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n"
     "The answer is 72.", "72", "72", C),
    ("Weng earns 12/60 = $0.2 per minute. Working 50 minutes, she earned 0.2 x 50 = $10. "
     "The answer is $10.", "10", "10", C),
    ("The bakery's total revenue is $1,080.00.", "1080", "1080", C),
    ("60 + 1,020 = 1,080\n#### 1,080", "1080", "1080", C),
    ("Final Answer: The final answer is $\\boxed{1,080}$. I hope it is correct.",
     "1080", "1080", C),
    ("\\boxed{18}", "18", "18", C),
    ("So she makes \\boxed{\\$18} per day.", "18", "18", C),
    ("The answer is 18 dollars.", "18", "18", C),
    ("The answer is: 18.", "18", "18", C),
    ("He spends 3 + 4 = 7 dollars more than he earns, so the change in his savings is -7. "
     "The answer is -7.", "-7", "-7", C),
    ("The temperature fell from 5 to \u22123 degrees, a change of \u22128 degrees.",
     "-8", "-8", C),
    ("5 - 3 = 2 apples remain.", "2", "2", C),
    ("The answer is 51.0", "51", "51", C),
    ("Half of the pizza is 0.50 of it, so the answer is 0.5", "0.5", "0.5", C),
    ("The price went up by 10/40 = 25%. The answer is 25%.", "25", "25", C),
    ("16 - 3 - 4 = 8 eggs are left, and 8 * 2 = 16. The answer is 16.", "18", "16", W),
    ("I'm sorry, but I can't solve this problem without more information.", "18", None, U),
    ("", "18", None, U),
    ("Answer: 13 eggs remain after breakfast and 9 are sold for $18.", "18", "13", W),
    ("Answer: 18\n\nQuestion: Tom has 5 apples and buys 7 more. How many does he have?",
     "18", "18", C),
    ("The answer is 72.\n\nQ: A shop has 10 shirts and sells 4.\nA: 10 - 4 = 6. "
     "The answer is 6.", "72", "6", W),
    ("So she has 3 + 4 = 7 cookies left.\n#### 7.", "7", "7", C),
    ("Total = 1,000,000 + 250,000 = 1,250,000 dollars", "1250000", "1250000", C),
    ("Each friend gets $\\frac{3}{4}$ of a cake. The final answer is $\\frac{3}{4}$.",
     "0.75", "0.75", C),
    ("她每天赚 9 \u00d7 2 = 18 美元。答案是 18。", "18", "18", C),
    ("Therefore, she makes **$18** per day.\n\n**Answer:** 18", "18", "18", C),
    ("The answer is eighteen.", "18", None, U),
    ("One trip takes 2.5 hours, so 4 trips take 2.5 \u00d7 4 = 10 hours.\nThe answer is 10",
     "10", "10", C),
    ("3 boxes of 12 make 3*12=36 pencils, and 36/4=9 per friend.\n9", "9", "9", C),
    ("#### $ 1,234.50", "1234.5", "1234.5", C),
    ("The answer is \\(\\boxed{42}\\)", "42", "42", C),
    ("x = 5, so 2x = 10 and the answer is 10 .", "10", "10", C),
    ("He owes 5 dollars. Answer: -$5", "-5", "-5", C),
    ("The answer is 3 hours and 20 minutes.", "200", "3", W),
    ("The answer is 1000000", "1,000,000", "1000000", C),
    ("She keeps 16 - 3 - 4 = 9 eggs.\nThe answer is 9 * 2 = 18.", "18", "18", C),
    ("A half-full cup holds half of 1 cup. The answer is .5", "0.5", "0.5", C),
    ("The answer is $3 \\times 6 = 18$.", "18", "18", C),
]

SVAMP_CASES = [
    ("76 - 25 = 51\nThe answer is 51.", "51", "51", C),
    ("The answer is 51.0", "51", "51", C),
    ("Dan had 3 + 2 = 5 dollars before buying the candy bar.\n#### 5", "5", "5", C),
    ("Answer: 1", "1", "1", C),
    ("He gave away 14 - 8 = 6 marbles.", "6", "6", C),
    ("He gave away 14 - 8 = 6 marbles.", "8", "6", W),
    ("There were 9 birds, then 6 more came: 9 + 6 = 15 birds. So the answer is 15 birds.",
     "15", "15", C),
    ("8 - 15 = -7, so there are 7 more birds than nests. The answer is 7.", "7", "7", C),
    ("Each box has 48 / 6 = 8 pencils.\n\\boxed{8}", "8", "8", C),
    ("\\boxed{8.0}", "8", "8", C),
    ("She baked $\\boxed{12}$ cookies in total.", "12", "12", C),
    ("Let x be the number of cakes. Then x + 5 = 12, so x = 7.", "7", "7", C),
    ("There are 1,200 people and 1,200 \u00f7 4 = 300 per bus.\n#### 300", "300", "300", C),
    ("The cost is 76 dollars minus 25 dollars.", "51", "25", W),
    ("Paco ate 5 sweet and 2 salty cookies.\nAnswer: 3 more sweet cookies than salty ones",
     "3", "3", C),
    ("Answer: He had 19 books left.", "19", "19", C),
    ("He needs 35 - 17 = 18 more stamps. The answer is 18\n", "18", "18", C),
    ("The answer is (18).", "18", "18", C),
    ("I cannot determine the answer without more information.", "18", None, U),
    ("   \n  ", "4", None, U),
    ("Answer:", "4", None, U),
    ("They collected 2 times as many: 2 x 12 = 24 shells. The answer is 24.", "24", "24", C),
    ("The answer is 24 shells, not 12.", "24", "24", C),
    ("Each half weighs 7 / 2 = 3.5 kg. The answer is 3.5", "3.5", "3.5", C),
    ("She has 45 - 18 = 27 stickers left. The final answer is 27", "27", "27", C),
    ("There are 1{,}024 pages. The answer is $1{,}024$.", "1024", "1024", C),
    ("The answer is \u22124", "-4", "-4", C),
    ("Shirley sold 54 boxes, 6 boxes per case: 54/6 = 9 cases.\n"
     "Therefore, the answer is: **9**", "9", "9", C),
    ("So the answer is 9 cases", "10", "9", W),
    ("R\u00e9sultat : 12 pommes. The answer is 12.", "12", "12", C),
    ("12 + 8 = 20\n20 - 5 = 15\n15", "15", "15", C),
    ("The answer is \\boxed{}. Counting again, the total is 15.", "15", "15", C),
    ("the answer is 7 apples and 3 oranges", "7", "7", C),
    ("He read 20% of 40 pages, i.e. 8 pages. The answer is 8 pages.", "8", "8", C),
    ("Answer: 2 x 12 = 24 shells", "24", "24", C),
    ("The answer is 24 (= 2 * 12)", "24", "24", C),
]

STRATEGYQA_CASES = [
    ("Genghis Khan had 16 children while Julius Caesar had 3. So the answer is yes.",
     "yes", "yes", C),
    ("Yes. Genghis Khan has millions of living descendants.", "yes", "yes", C),
    ("No. Albany, Georgia has about 70,000 residents and is shrinking.", "no", "no", C),
    ("No, it would not.", "no", "no", C),
    ("yes", "yes", "yes", C),
    ("NO", "no", "no", C),
    ("True", "yes", "yes", C),
    ("False. Pi is not a whole number, so it cannot be a number of children.", "no", "no", C),
    ("There is no evidence that he visited Mars. However, the book says he did. "
     "The answer is yes.", "no", "yes", W),
    ("There is no evidence that he visited Mars, so this seems unlikely.", "no", None, U),
    ("No evidence suggests that cats can read.", "no", None, U),
    ("Answer: No", "no", "no", C),
    ("#### yes", "yes", "yes", C),
    ("\\boxed{yes}", "yes", "yes", C),
    ("The final answer is $\\boxed{\\text{No}}$.", "no", "no", C),
    ("The answer is: **Yes**", "yes", "yes", C),
    ("**Yes**, the Great Wall is longer than the distance from Paris to Rome.",
     "yes", "yes", C),
    ("Yes, without a doubt. Wait, the Nile is longer. The answer is no.", "no", "no", C),
    ("I think so. The answer is yes", "no", "yes", W),
    ("It depends on the definition of a sandwich.", "yes", None, U),
    ("", "yes", None, U),
    ("Maybe.", "no", None, U),
    ("The answer is not clear from the facts given.", "no", None, U),
    ("Yesterday's paper said the bridge is closed, so the answer is no", "no", "no", C),
    ("Nope, that is impossible.", "no", None, U),
    ("S\u00ed. La respuesta: the answer is yes.", "yes", "yes", C),
    ("Oui \u2014 the answer is yes.", "yes", "yes", C),
    ("True love is rare, and the answer is no.", "no", "no", C),
    ("True love is rare.", "yes", None, U),
    ("Answer: False", "yes", "no", W),
    ("  \n  No\nBecause the city has fewer than 100,000 people.", "no", "no", C),
    ("Yes it would, since a llama can carry about 30 kg.", "yes", "yes", C),
    ("No one knows for sure, but probably yes.", "yes", None, U),
    ("The answer is yes.\n\nQ: Could a dog drive a car?\nA: No. The answer is no.",
     "yes", "no", W),
    ("\u2014 No.", "no", None, U),
    ("The answer is \"No\".", "no", "no", C),
]

PLACES = ("Shannan", "Jiangnan", "Shanbei", "Jiangbei")
CLAIMS = ("Every student passed the exam.", "Some students did not study.",
          "A teacher failed the exam.", "No student failed the exam.")

# (completion, options, gold, extracted answer, verdict)
LOGIQA_CASES = [
    ("The answer is (C).", CLAIMS, "C", "C", C),
    ("The answer is C", CLAIMS, "C", "C", C),
    ("Answer: B", CLAIMS, "C", "B", W),
    ("#### D", CLAIMS, "D", "D", C),
    ("\\boxed{A}", CLAIMS, "A", "A", C),
    ("$\\boxed{\\text{B}}$", CLAIMS, "B", "B", C),
    ("The correct option is C.", PLACES, "C", "C", C),
    ("Option C is correct because the context says the team is from the south.",
     PLACES, "C", "C", C),
    ("B.", CLAIMS, "B", "B", C),
    ("(B)", CLAIMS, "B", "B", C),
    ("B) Some students did not study.", CLAIMS, "B", "B", C),
    ("b", CLAIMS, "B", "B", C),
    ("answer: d", CLAIMS, "D", "D", C),
    ("A cat is not a dog, so the first claim fails. The answer is D.", CLAIMS, "D", "D", C),
    ("A cat is a mammal.", CLAIMS, "A", None, U),
    ("A teacher failed the exam.", CLAIMS, "C", "C", C),
    ("Based on the passage, the conclusion is that some students did not study.",
     CLAIMS, "B", "B", C),
    ("The champion team is from Jiangbei.", PLACES, "D", "D", C),
    ("Either Shannan or Jiangnan could have won.", PLACES, "A", None, U),
    ("I am not sure.", PLACES, "A", None, U),
    ("", PLACES, "A", None, U),
    ("The answer is A because the premise rules out the others.", CLAIMS, "A", "A", C),
    ("The answer is a good question in itself.", CLAIMS, "A", None, U),
    ("A. Every student passed the exam.", CLAIMS, "A", "A", C),
    ("**Answer: (D)**", CLAIMS, "D", "D", C),
    ("Let's check each option. Option A is wrong because not everyone passed. "
     "Option B is also wrong. Therefore the answer is option D.", CLAIMS, "D", "D", C),
    ("答案是 C。因为题干说明了这一点。", PLACES, "C", "C", C),
    ("The answer is C\u3002", PLACES, "C", "C", C),
    ("Among the choices, C seems best.", PLACES, "C", None, U),
    ("The best answer is D: No student failed the exam.", CLAIMS, "D", "D", C),
    ("Answer: c) Shanbei", PLACES, "C", "C", C),
    ("The answer is (e).", PLACES, "A", None, U),
    ("The answer is B.\n\nQuestion 2: Which city is the capital?\nThe answer is A.",
     PLACES, "B", "A", W),
    ("D", PLACES, "D", "D", C),
    ("I choose B because some students did not study.", CLAIMS, "B", "B", C),
    ("Final answer: [B]", PLACES, "B", "B", C),
    ("The correct choice is Jiangnan.", PLACES, "B", "B", C),
    ("A student who skipped class failed.", CLAIMS, "C", None, U),
    ("Answer: A, since every student passed.", CLAIMS, "A", "A", C),
    ("Option A is wrong because not everyone passed.", CLAIMS, "D", None, U),
    ("A is incorrect, while D fits the passage.", CLAIMS, "D", None, U),
    ("Option A: wrong.\nOption B: wrong.\nOption C: wrong.\nSo the answer is D.",
     CLAIMS, "D", "D", C),
    ("(A) and (B) both sound plausible, but the answer is (b).", CLAIMS, "B", "B", C),
    ("**C**\n\nThe passage says the team is from the north bank.", PLACES, "C", "C", C),
]


def _ids(cases):
    return [f"{i:02d}" for i in range(len(cases))]


@pytest.mark.parametrize("completion, gold, answer, verdict", GSM8K_CASES, ids=_ids(GSM8K_CASES))
def test_gsm8k(completion, gold, answer, verdict):
    q = Question("gsm8k-test-x", "question", gold)
    assert TASKS["gsm8k"].grade(completion, q) == Graded(answer, verdict)


@pytest.mark.parametrize("completion, gold, answer, verdict", SVAMP_CASES, ids=_ids(SVAMP_CASES))
def test_svamp(completion, gold, answer, verdict):
    q = Question("chal-x", "question", gold)
    assert TASKS["svamp"].grade(completion, q) == Graded(answer, verdict)


@pytest.mark.parametrize("completion, gold, answer, verdict", STRATEGYQA_CASES,
                         ids=_ids(STRATEGYQA_CASES))
def test_strategyqa(completion, gold, answer, verdict):
    q = Question("sqa-x", "question?", gold)
    assert TASKS["strategyqa"].grade(completion, q) == Graded(answer, verdict)


@pytest.mark.parametrize("completion, options, gold, answer, verdict", LOGIQA_CASES,
                         ids=_ids(LOGIQA_CASES))
def test_logiqa(completion, options, gold, answer, verdict):
    q = Question("logiqa-test-x", "context", gold, options)
    assert TASKS["logiqa"].grade(completion, q) == Graded(answer, verdict)


def test_case_counts():
    for cases in (GSM8K_CASES, SVAMP_CASES, STRATEGYQA_CASES, LOGIQA_CASES):
        assert len(cases) >= 30


# ------------------------------------------------------------ pure helpers

@pytest.mark.parametrize("text, expected", [
    ("51.0", "51"), ("1,080", "1080"), ("-7", "-7"), ("0.50", "0.5"),
    ("100", "100"), ("-0.0", "0"), ("\\frac{1}{3}", "0.333333333"),
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
