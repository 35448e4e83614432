"""Answer extraction and grading, one pure function pair per answer family.

Every grader first looks for an explicit final-answer marker ("####",
"The answer is", "Answer:", "\\boxed{...}") and trusts the last one that
carries an answer; only then does it fall back to a weaker, family-specific
heuristic. Nothing is ever guessed from a stray word in the middle of the
reasoning: a completion with no usable answer is UNPARSEABLE.
"""
from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction


class Verdict(str, enum.Enum):
    CORRECT = "correct"
    WRONG = "wrong"
    UNPARSEABLE = "unparseable"


@dataclass(frozen=True)
class Graded:
    answer: str | None  # canonical extracted answer, None when nothing was found
    verdict: Verdict


# "answer is", "final answer:", "answer would be", "答案是", ... then ####, \boxed{.
_ANSWER_WORDS = (r"\banswer\b\s*(?:is\b|would\s+be\b|should\s+be\b|:|：|=)"
                 r"|答案\s*(?:是|为|:|：)")
_MARKER = re.compile(rf"####|\\boxed\s*\{{|{_ANSWER_WORDS}", re.I)
# Choice tasks also say "the correct option is C" / "the best choice: (B)".
_CHOICE_MARKER = re.compile(
    rf"####|\\boxed\s*\{{|{_ANSWER_WORDS}|\b(?:option|choice)\b\s*(?:is\b|:|：)", re.I)
# A sentence ends at .!? followed by space or end ("18.5" and "1,080.00" do not
# end one), or at a full-width stop, which needs no space after it.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|[。！？]")


def _braced(text: str, start: int) -> str:
    """Content of a {...} group whose opening brace ends just before `start`."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return text[start:]  # unclosed box: take the rest rather than nothing


def _clause(text: str, start: int) -> str:
    """The rest of the line (skipping blank space first), cut at the sentence end."""
    rest = text[start:].lstrip()
    rest = rest.split("\n", 1)[0]
    end = _SENTENCE_END.search(rest)
    return rest[: end.start()] if end else rest


def _marked_segments(text: str, marker: re.Pattern = _MARKER) -> Iterator[tuple[int, str]]:
    """(position, what follows) for each answer marker, the last marker first."""
    for m in reversed(list(marker.finditer(text))):
        if m.group().startswith("\\"):
            yield m.start(), _braced(text, m.end())
        else:
            yield m.start(), _clause(text, m.end())


def _graded(answer: str | None, correct: bool) -> Graded:
    if answer is None:
        return Graded(None, Verdict.UNPARSEABLE)
    return Graded(answer, Verdict.CORRECT if correct else Verdict.WRONG)


# ===================================================================== numbers

_DIGITS = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
# Not preceded by an ASCII letter/digit, so "x2", "H2O" and the "3" of "5-3"
# (as a negative) are not taken; CJK text right before a number is fine.
_NUMBER = re.compile(
    rf"(?P<fsign>-)?\s*\\[dt]?frac\s*"
    rf"\{{\s*(?P<fnum>{_DIGITS})\s*\}}\s*\{{\s*(?P<fden>{_DIGITS})\s*\}}"
    rf"|(?<![A-Za-z0-9_])(?P<sign>-)?\$?(?P<num>{_DIGITS}|(?<![\w.])\.\d+)",
    re.ASCII,
)
# LaTeX and typography that would otherwise hide or split a number.
_NUMBER_CLEANUP = [("{,}", ","), ("\\,", ","), ("\\!", ""), ("\\$", "$"),
                   ("\\%", "%"), ("\u2212", "-"), ("\u2013", "-"),
                   ("\\times", "*"), ("\\cdot", "*")]
# "The answer is 10 - 4 = 6": an arithmetic expression right after the marker
# is worked out by the model itself; its result follows the last "=".
_EXPRESSION = re.compile(r"[\s*$]*[-+*/×÷x()\d.,\s$]+(?<![(\s])\s*=")


def _to_fraction(m: re.Match) -> Fraction | None:
    if m.group("num") is not None:
        value = Fraction(Decimal(m.group("num").replace(",", "")))
        return -value if m.group("sign") else value
    den = Fraction(Decimal(m.group("fden").replace(",", "")))
    if den == 0:
        return None
    value = Fraction(Decimal(m.group("fnum").replace(",", ""))) / den
    return -value if m.group("fsign") else value


def _first_number(text: str) -> Fraction | None:
    for m in _NUMBER.finditer(text):
        value = _to_fraction(m)
        if value is not None:
            return value
    return None


def _last_number(text: str) -> Fraction | None:
    values = [v for v in map(_to_fraction, _NUMBER.finditer(text)) if v is not None]
    return values[-1] if values else None


def canonical_number(value: Fraction | str) -> str:
    """Canonical text of a number: 51.0 -> 51, 1,080 -> 1080, 1/2 -> 0.5 (<= 9 decimals)."""
    if isinstance(value, str):
        parsed = _first_number(value)
        if parsed is None:
            raise ValueError(f"not a number: {value!r}")
        value = parsed
    if value.denominator == 1:
        return str(value.numerator)
    rounded = round(Decimal(value.numerator) / Decimal(value.denominator), 9)
    text = format(rounded.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def extract_number(completion: str) -> str | None:
    """Canonical final number of a completion, or None if it holds no number."""
    text = completion
    for old, new in _NUMBER_CLEANUP:
        text = text.replace(old, new)
    for _, segment in _marked_segments(text):
        if _EXPRESSION.match(segment):
            segment = segment.rsplit("=", 1)[1]
        value = _first_number(segment)
        if value is not None:
            return canonical_number(value)
    value = _last_number(text)
    return None if value is None else canonical_number(value)


def grade_number(completion: str, gold: str) -> Graded:
    answer = extract_number(completion)
    if answer is None:
        return _graded(None, False)
    gold_value = Fraction(Decimal(canonical_number(gold)))
    return _graded(answer, abs(Fraction(Decimal(answer)) - gold_value) <= Fraction(1, 10**6))


# ====================================================================== yes/no

_WORD_TO_VERDICT = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
# After a marker: optional punctuation/markup, then the verdict word.
_VERDICT_AFTER_MARKER = re.compile(
    r"[\s:*_\"'“”‘’(\[{]*(?:\\text(?:bf)?\s*\{\s*)?(yes|no|true|false)\b", re.I)
# At the very start. "Yes" can begin a verdict with anything after it; "No",
# "True" and "False" must be followed by punctuation or a line end, since
# "No evidence shows..." or "True love..." are not verdicts.
_VERDICT_AT_START = re.compile(
    r"\s*[*_\"'“‘(\[]*\s*(?:(yes)\b|(no|true|false)(?=[^\S\n]*(?:[^\w\s]|\n|$)))", re.I)


def extract_yesno(completion: str) -> str | None:
    """The verdict "yes" / "no", or None when the completion states none explicitly."""
    for _, segment in _marked_segments(completion):
        m = _VERDICT_AFTER_MARKER.match(segment)
        if m:
            return _WORD_TO_VERDICT[m.group(1).lower()]
    m = _VERDICT_AT_START.match(completion)
    if m:
        return _WORD_TO_VERDICT[(m.group(1) or m.group(2)).lower()]
    return None


def grade_yesno(completion: str, gold: str) -> Graded:
    answer = extract_yesno(completion)
    return _graded(answer, answer == gold.strip().lower())


# ============================================================ multiple choice

LETTERS = "ABCD"
# A letter, optionally bracketed, after optional markup and "option"/"choice".
_LETTER = re.compile(
    r"[\s:*_\"'“”‘’{]*(?:\\text(?:bf)?\s*\{\s*)?(?P<word>(?:option|choice)\s*)?"
    r"(?P<open>[(\[])?\s*(?P<letter>[A-Da-d])(?:\s*(?P<close>[)\]]))?", re.I)
# What may follow a lone letter that opens a completion: "B." "B:" "**B**" "B -"
# or nothing else on its line.
_LEAD_END = re.compile(r"[^\S\n]*(?:[.:*\-–—]|\n|$)")
# "Option C is correct" states the answer without any marker before it.
_OPTION_IS_CORRECT = re.compile(
    r"\b(?:option|choice)\s*\(?([A-D])\)?\s+is\s+(?:the\s+)?(?:correct|right|best|answer)\b",
    re.I)
# Words that may follow a bare letter answer ("A because ..."); any other word
# after "A"/"a" marks it as the article ("A cat is ...").
_AFTER_LETTER = {"is", "was", "because", "since", "as", "and", "which", "would",
                 "should", "must", "seems", "fits", "best", "for", "-", "–", "—"}


def _accepted_letter(text: str, at_start: bool = False) -> str | None:
    """The letter at the start of `text` if it reads as an answer letter.

    After a marker a letter may be followed by more words ("B because ..."),
    except that "A"/"a" then needs a connective, or it is the article ("A cat").
    At the start of a completion only a lone label counts, since "A is wrong,
    B is wrong ..." or "Option A: ..." begin a walk through the options.
    """
    m = _LETTER.match(text)
    if not m:
        return None
    letter, rest = m.group("letter"), text[m.end():]
    if at_start:
        lone = not m.group("word") and (m.group("close") or _LEAD_END.match(rest))
        return letter.upper() if lone else None
    if m.group("close"):  # "(B)", "B)", "[c]"
        return letter.upper()
    if not rest or not (rest[0].isalnum() or rest[0].isspace()):
        return letter.upper()  # end, or punctuation such as "B." "c:" "D**"
    if rest[0].isalnum():
        return None  # part of a word: "Because", "Dogs"
    if not rest.strip(" \t") or rest.lstrip(" \t")[0] == "\n":
        return letter.upper()  # alone on its line
    next_word = rest.split()[0].lower().strip(",.;:")
    if letter in "BCD" or next_word in _AFTER_LETTER:
        return letter.upper()
    return None


def _option_letter(text: str, options: Sequence[str]) -> str | None:
    """The letter of the single option whose text appears in the completion."""
    haystack = " ".join(text.split()).lower()
    found: dict[str, str] = {}
    for letter, option in zip(LETTERS, options):
        needle = " ".join(option.split()).lower().rstrip(" .;。")
        if needle and re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", haystack):
            found[letter] = needle
    # An option quoted inside a longer matching option ("G" in "G or L") is not a hit.
    hits = [k for k, v in found.items()
            if not any(v != w and v in w for w in found.values())]
    return hits[0] if len(hits) == 1 else None


def extract_choice(completion: str, options: Sequence[str] = ()) -> str | None:
    """The letter A-D, or None. Order: answer marker, leading letter, option text."""
    valid = LETTERS[: len(options)] if options else LETTERS
    candidates = [(at, _accepted_letter(segment))
                  for at, segment in _marked_segments(completion, _CHOICE_MARKER)]
    candidates += [(m.start(), m.group(1).upper())
                   for m in _OPTION_IS_CORRECT.finditer(completion)]
    for _, letter in sorted(candidates, key=lambda c: c[0], reverse=True):
        if letter and letter in valid:
            return letter
    letter = _accepted_letter(completion.lstrip(), at_start=True)
    if letter and letter in valid:
        return letter
    return _option_letter(completion, options) if options else None


def grade_choice(completion: str, gold: str, options: Sequence[str] = ()) -> Graded:
    answer = extract_choice(completion, options)
    return _graded(answer, answer == gold.strip().upper())
