"""Answer extraction and grading, one pure function pair per answer family (one module each:
numbers, yesno, choice; what they share in common).

Every grader first looks for an explicit final-answer marker ("####",
"The answer is", "Answer:", "\\boxed{...}", and per family a stated verdict
such as "Conclusion: False." or an option statement such as "Option C is
correct") and trusts the last one that carries an answer; only then does it
fall back to a weaker, family-specific guess. Nothing is ever guessed from a
stray word in the middle of the reasoning: a completion with no usable answer
is UNPARSEABLE, and so is one whose last stated answer hedges ("5 or 6",
"yes and no", "B or C"): it never counts as its first alternative.

`Graded.how` says how the answer was read:
  "marker"    after (or within) an explicit final-answer marker, as above;
  "fallback"  guessed from the text: the last number, a yes/no or a letter
              opening the completion, an option's text found in it. Such a
              guess can misread ("9 groups of 2 bananas each" reads 2): a
              wrong answer read so may be the grader's mistake, not the model's;
  None        nothing was read (verdict UNPARSEABLE).

Grading takes time linear in the completion's length, whatever it holds
(20,000 unclosed "\\boxed{", a million digits or blanks): the text read after
a marker stops at the next marker, so no character is read once per marker,
and no pattern has two repeats that compete for the same run of characters.
"""
from .choice import LETTERS, extract_choice, grade_choice
from .common import FALLBACK, MARKER, Graded, Verdict
from .numbers import canonical_number, extract_number, grade_number
from .yesno import extract_yesno, grade_yesno

__all__ = ["FALLBACK", "LETTERS", "MARKER", "Graded", "Verdict", "canonical_number", "extract_choice",
           "extract_number", "extract_yesno", "grade_choice", "grade_number", "grade_yesno"]
