"""Answer extraction and grading, one pure function pair per answer family.

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
from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import TypeVar

T = TypeVar("T")


class Verdict(str, enum.Enum):
    CORRECT = "correct"
    WRONG = "wrong"
    UNPARSEABLE = "unparseable"


MARKER, FALLBACK = "marker", "fallback"


@dataclass(frozen=True)
class Graded:
    answer: str | None  # canonical extracted answer, None when nothing was found
    verdict: Verdict
    how: str | None  # MARKER or FALLBACK: how the answer was read; None when unparseable


class _NoSingleAnswer(Exception):
    """The last answer stated is a hedge ("5 or 6", "not 5"): stop, read nothing."""


# "answer is", "answer to the question is", "final answer:", "答案是", ...
_ANSWER_WORDS = (r"\banswer\b(?:\s+to\s+(?:the|this)\s+question)?"
                 r"\s*(?:is\b|would\s+be\b|should\s+be\b|:|：|=)"
                 r"|答案\s*(?:是|为|:|：)")
_BOX = r"\\boxed\s*\{"
_MARKER = re.compile(rf"####|{_BOX}|{_ANSWER_WORDS}", re.I)
# A sentence ends at .!? followed by space or end ("18.5" and "1,080.00" do not
# end one), or at a full-width stop, which needs no space after it.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|[。！？]")
_BLANK = re.compile(r"\s*")
_BRACE = re.compile(r"[{}]")
# What joins two alternative answers: "yes and no", "Yes/No", "B or C", "A & B".
_JOINED = re.compile(r"\s*(?:/|&|(?:and/or|and|or)\b)\s*", re.I)


def _braced(text: str, start: int, end: int) -> str:
    """Content of the {...} group opened just before `start`; if unclosed, up to `end`."""
    depth = 1
    for m in _BRACE.finditer(text, start, end):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[start:m.start()]
    return text[start:end]


def _clause(text: str, start: int, end: int) -> str:
    """From `start`, after blank space, to the line's or the sentence's end (at most `end`)."""
    start = _BLANK.match(text, start, end).end()
    line_end = text.find("\n", start, end)
    line_end = end if line_end < 0 else line_end
    stop = _SENTENCE_END.search(text, start, line_end)
    return text[start:stop.start() if stop else line_end]


def _marked(text: str, marker: re.Pattern) -> Iterator[tuple[re.Match, str]]:
    """(marker, what follows it) for each answer marker, the last marker first.

    What follows a marker stops at the next one, so that reading all of them
    stays linear in the text however many markers it holds."""
    matches = list(marker.finditer(text))
    ends = [m.start() for m in matches[1:]] + [len(text)]
    for m, end in zip(reversed(matches), reversed(ends)):
        read = _braced if m.group().startswith("\\") else _clause
        yield m, read(text, m.end(), end)


def _read(marked: Iterable[T | None],
          fallback: Callable[[], T | None]) -> tuple[T | None, str | None]:
    """(answer, how): the first answer a marker gives, else the fallback's guess;
    (None, None) when there is neither or the last answer stated hedges."""
    try:
        for answer in marked:
            if answer is not None:
                return answer, MARKER
        answer = fallback()
    except _NoSingleAnswer:
        return None, None
    return (None, None) if answer is None else (answer, FALLBACK)


def _graded(answer: str | None, how: str | None, correct: bool) -> Graded:
    if answer is None:
        return Graded(None, Verdict.UNPARSEABLE, None)
    return Graded(answer, Verdict.CORRECT if correct else Verdict.WRONG, how)


# ===================================================================== numbers

_DIGITS = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_NUMBER = re.compile(
    # \frac{3}{4}, \dfrac, \tfrac.
    rf"(?:(?P<fsign>-)\s*)?\\[dt]?frac\s*"
    rf"\{{\s*(?P<fnum>{_DIGITS})\s*\}}\s*\{{\s*(?P<fden>{_DIGITS})\s*\}}"
    # Otherwise not preceded by an ASCII letter/digit, so "x2", "H2O" and the "3"
    # of "5-3" (as a negative) are not taken; CJK text right before is fine.
    rf"|(?<![A-Za-z0-9_])(?P<sign>-)?\$?(?:"
    # A date, 3/5/2024, is matched only to be skipped: it is no fraction.
    rf"(?P<date>\d+(?:/\d+){{2,}})"
    # 18, 1,080.50, .5, 5/2, and the whole part of a mixed number, "1 1/2".
    rf"|(?:(?P<whole>\d+)[^\S\n]+(?=\d+/\d+(?![/\d]|\.\d)))?"
    rf"(?P<num>{_DIGITS}|(?<![\w.])\.\d+)(?:/(?P<den>{_DIGITS}))?)",
    re.ASCII,
)
# No answer has more digits; converting a run of a million would take long.
_MAX_DIGITS = 40
# LaTeX and typography that would otherwise hide or split a number.
_NUMBER_CLEANUP = [("{,}", ","), ("\\,", ","), ("\\!", ""), ("\\$", "$"),
                   ("\\%", "%"), ("\u2212", "-"), ("\u2013", "-"),
                   ("\\times", "*"), ("\\cdot", "*")]
# Arithmetic opening a marked answer: "12^2 = 144", "50% of 80 = 40",
# "$3 * 6 = 18$". The model worked it out itself: its result follows the last
# "=" outside brackets (in "24 (= 2 * 12)" the bracket only explains 24).
_CHAIN = re.compile(r"(?:\\[A-Za-z]+|[-+*/×÷x^%()\[\]{}\\\d.,:\s$²³=_]|\bof\b)*")
# "=" and the brackets within a chain; "\(" and "\[" only open LaTeX maths.
_CHAIN_SIGN = re.compile(r"=|(?<!\\)[()\[\]]")
# "not 5, it is 6", "**not** 5": the number after "not" is the one ruled out.
_NOT = re.compile(r"[*_\s]*not\b[*_\s]*", re.I)
# "5 or 6", "5, or maybe 6": a second number offered beside the first.
_OR = re.compile(r"\s*(?:,\s*)?or\s+(?:maybe\s+|perhaps\s+|possibly\s+)?", re.I)
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
          "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
# A number in words right at a marked answer ("seven", "twenty-five"), but not
# the pronoun of "one of them" / "one that ...", nor a part of "nine hundred".
_NUMBER_WORD = re.compile(
    rf"[\s*_:\"'(]*(?:(?P<tens>{'|'.join(_TENS)})(?:[-\s](?P<unit>{'|'.join(_UNITS[1:10])}))?"
    rf"|(?P<small>{'|'.join(_UNITS)}))\b"
    r"(?![-\s]+(?:of|that|which|who|hundred|thousand|million|billion)\b)", re.I)


def _to_fraction(m: re.Match) -> Fraction | None:
    """The value of a _NUMBER match; None for a date, a zero denominator or a huge number."""
    if m.group("date"):
        return None
    if m.group("fnum") is not None:
        sign, parts = m.group("fsign"), (m.group("fnum"), m.group("fden"), "0")
    else:
        sign = m.group("sign")
        parts = (m.group("num"), m.group("den") or "1", m.group("whole") or "0")
    if max(map(len, parts)) > _MAX_DIGITS:
        return None
    num, den, whole = (Fraction(Decimal(part.replace(",", ""))) for part in parts)
    if den == 0:
        return None
    return -(whole + num / den) if sign else whole + num / den


def _numbers(text: str, pos: int = 0) -> Iterator[tuple[Fraction, int]]:
    """(value, end) of each readable number in text[pos:], in order."""
    for m in _NUMBER.finditer(text, pos):
        value = _to_fraction(m)
        if value is not None:
            yield value, m.end()


def _first_number(text: str, pos: int = 0) -> tuple[Fraction, int] | None:
    return next(_numbers(text, pos), None)


def _last_number(text: str) -> Fraction | None:
    for m in reversed(list(_NUMBER.finditer(text))):
        value = _to_fraction(m)
        if value is not None:
            return value
    return None


def _result_start(segment: str) -> int:
    """Where the result of an arithmetic chain opening `segment` starts (0 if none)."""
    chain = _CHAIN.match(segment).group()
    depth, start = 0, 0
    for m in _CHAIN_SIGN.finditer(chain):
        if m.group() == "=":
            start = m.end() if depth == 0 else start
        else:
            depth += 1 if m.group() in "([" else -1
    return start


def _word_number(m: re.Match) -> Fraction:
    if m.group("small"):
        return Fraction(_UNITS.index(m.group("small").lower()))
    unit = _UNITS.index(m.group("unit").lower()) if m.group("unit") else 0
    return Fraction(20 + 10 * _TENS.index(m.group("tens").lower()) + unit)


def _number_at(text: str, pos: int) -> tuple[Fraction, int] | None:
    """(value, end) of the number, in words or digits, that `text` holds right at `pos`."""
    word = _NUMBER_WORD.match(text, pos)
    if word:
        return _word_number(word), word.end()
    m = _NUMBER.match(text, pos)
    value = m and _to_fraction(m)
    return None if value is None else (value, m.end())


def _marked_number(segment: str) -> Fraction | None:
    """The number a marked answer states, None if none; raises _NoSingleAnswer on a hedge."""
    start = _result_start(segment)
    negated = _NOT.match(segment, start)
    ruled_out = negated and _NUMBER.match(segment, negated.end())
    if ruled_out:  # "not 5, it is 6"; "not 5" alone rules out without answering
        found = _first_number(segment, ruled_out.end())
        if found is None:
            raise _NoSingleAnswer
        return found[0]
    word = _NUMBER_WORD.match(segment, start)
    found = (_word_number(word), word.end()) if word else _first_number(segment, start)
    if found is None:
        return None
    value, end = found
    offered = _OR.match(segment, end)
    other = offered and _number_at(segment, offered.end())
    if other and other[0] != value:  # "18 or $18" is no hedge
        raise _NoSingleAnswer
    return value


def canonical_number(value: Fraction | str) -> str:
    """Canonical text of a number: 51.0 -> 51, 1,080 -> 1080, 1/2 -> 0.5 (<= 9 decimals)."""
    if isinstance(value, str):
        found = _first_number(value)
        if found is None:
            raise ValueError(f"not a number: {value!r}")
        value = found[0]
    if value.denominator == 1:
        return str(value.numerator)
    rounded = round(Decimal(value.numerator) / Decimal(value.denominator), 9)
    text = format(rounded.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _read_number(completion: str) -> tuple[str | None, str | None]:
    text = completion
    for old, new in _NUMBER_CLEANUP:
        text = text.replace(old, new)
    value, how = _read((_marked_number(segment) for _, segment in _marked(text, _MARKER)),
                       lambda: _last_number(text))
    return (None, None) if value is None else (canonical_number(value), how)


def extract_number(completion: str) -> str | None:
    """Canonical final number of a completion, or None if it holds no number."""
    return _read_number(completion)[0]


def grade_number(completion: str, gold: str) -> Graded:
    answer, how = _read_number(completion)
    gold_value = Fraction(Decimal(canonical_number(gold)))
    correct = (answer is not None
               and abs(Fraction(Decimal(answer)) - gold_value) <= Fraction(1, 10**6))
    return _graded(answer, how, correct)


# ====================================================================== yes/no

_WORD_TO_VERDICT = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
_OPPOSITE = {"yes": "no", "no": "yes"}
# Besides the answer markers, a verdict follows "Conclusion:" or "I would say",
# or is stated as "the statement is (not) false" (group "stated").
_VERDICT_MARKER = re.compile(
    rf"####|{_BOX}|{_ANSWER_WORDS}|\bconclusion\b\s*(?:is\b|:|：)|\bI(?:\s+would|'d|’d)\s+say\b"
    r"|\b(?:statement|claim|assertion)\s+is\s+(?P<negated>not\s+)?(?P<stated>true|false)\b", re.I)
# After a marker: optional punctuation/markup, then the verdict word.
_VERDICT_AFTER_MARKER = re.compile(
    r"[\s:*_\"'“”‘’(\[{]*(?:\\text(?:bf)?\s*\{\s*)?(yes|no|true|false)\b", re.I)
# At the very start. "Yes" can begin a verdict with anything after it; "No",
# "True" and "False" must be followed by punctuation or a line end, since
# "No evidence shows..." or "True love..." are not verdicts.
_VERDICT_AT_START = re.compile(
    r"[\s*_\"'“‘(\[]*(?:(yes)\b|(no|true|false)(?=[^\S\n]*(?:[^\w\s]|\n|$)))", re.I)
# The second verdict of a hedge after a marker, past _JOINED: "yes and no".
_SECOND_VERDICT = re.compile(r"[\"'“”‘’*_]*(yes|no|true|false)\b", re.I)


def _single_verdict(text: str, m: re.Match, second: re.Pattern) -> str:
    """The verdict `m` read in `text`; raises _NoSingleAnswer if `second` reads another
    joined to it ("yes and no", "Yes/No")."""
    verdict = _WORD_TO_VERDICT[m.group(m.lastindex).lower()]
    joined = _JOINED.match(text, m.end())
    other = joined and second.match(text, joined.end())
    if other and _WORD_TO_VERDICT[other.group(other.lastindex).lower()] != verdict:
        raise _NoSingleAnswer
    return verdict


def _last_sentence_start(text: str) -> int:
    body_end = len(text.rstrip())
    start = text.rfind("\n", 0, body_end) + 1
    for m in _SENTENCE_END.finditer(text, start, body_end):
        if m.end() < body_end:  # the stop that closes the text begins no sentence
            start = m.end()
    return start


def _marked_verdict(m: re.Match, segment: str, last_sentence: int) -> str | None:
    if m.group("stated"):
        # Mid-reasoning, "... is false" is as often said of a premise or of a
        # claim made on the way; only in the closing sentence is it the verdict.
        if m.start() < last_sentence:
            return None
        verdict = _WORD_TO_VERDICT[m.group("stated").lower()]
        return _OPPOSITE[verdict] if m.group("negated") else verdict
    found = _VERDICT_AFTER_MARKER.match(segment)
    return _single_verdict(segment, found, _SECOND_VERDICT) if found else None


def _leading_verdict(completion: str) -> str | None:
    # The second verdict too must read as one that opens a text, or "Yes and
    # no one doubts it" would be a hedge.
    m = _VERDICT_AT_START.match(completion)
    return _single_verdict(completion, m, _VERDICT_AT_START) if m else None


def _read_yesno(completion: str) -> tuple[str | None, str | None]:
    last_sentence = _last_sentence_start(completion)
    marked = (_marked_verdict(m, segment, last_sentence)
              for m, segment in _marked(completion, _VERDICT_MARKER))
    return _read(marked, lambda: _leading_verdict(completion))


def extract_yesno(completion: str) -> str | None:
    """The verdict "yes" / "no", or None when the completion states none explicitly."""
    return _read_yesno(completion)[0]


def grade_yesno(completion: str, gold: str) -> Graded:
    answer, how = _read_yesno(completion)
    return _graded(answer, how, answer == gold.strip().lower())


# ============================================================ multiple choice

LETTERS = "ABCD"
# Besides the answer markers: "the correct option is C", "the best choice: (B)",
# and a statement that an option is the answer (group "stated"): "Option C is
# correct", "(C) is the correct answer", "C is right" (a bare letter only in
# upper case: it is then no article, since "A is right" is no English).
_CHOICE_MARKER = re.compile(
    rf"####|{_BOX}|{_ANSWER_WORDS}|\b(?:option|choice)\b\s*(?:is\b|:|：)"
    r"|(?:\b(?:option|choice)\s*\(?|\(|\b(?-i:(?=[A-D]\b)))(?P<stated>[A-D])\)?"
    r"\s+is\s+(?:the\s+)?(?:correct|right|best|answer)\b", re.I)
# A letter, optionally bracketed, after optional markup and "option"/"choice".
_LETTER = re.compile(
    r"[\s:*_\"'“”‘’{]*(?:\\text(?:bf)?\s*\{\s*)?(?P<word>(?:option|choice)\s*)?"
    r"(?P<open>[(\[]\s*)?(?P<letter>[A-Da-d])(?:\s*(?P<close>[)\]]))?", re.I)
# What may follow a lone letter that opens a completion: "B." "B:" "**B**" "B -"
# or nothing else on its line.
_LEAD_END = re.compile(r"[^\S\n]*(?:[.:*\-–—]|\n|$)")
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
    next_word = rest.split(None, 1)[0].lower().strip(",.;:")
    if letter in "BCD" or next_word in _AFTER_LETTER:
        return letter.upper()
    return None


def _refuse_two_letters(text: str, at_start: bool = False) -> None:
    """Raise _NoSingleAnswer if `text` opens with two letters joined: "B or C", "(A) and (B)".

    At the start of a completion only a lone pair is a hedge: "A and B are
    wrong" begins a walk through the options."""
    first = _LETTER.match(text)
    joined = first and _JOINED.match(text, first.end())
    second = joined and _accepted_letter(text[joined.end():], at_start)
    if second and second != first.group("letter").upper():
        raise _NoSingleAnswer


def _marked_letter(m: re.Match, segment: str, valid: str) -> str | None:
    if m.group("stated"):
        letter = m.group("stated").upper()
    else:
        _refuse_two_letters(segment)
        letter = _accepted_letter(segment)
    return letter if letter and letter in valid else None


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


def _unmarked_letter(completion: str, options: Sequence[str], valid: str) -> str | None:
    """A lone letter opening the completion, else the option whose text it holds."""
    text = completion.lstrip()
    _refuse_two_letters(text, at_start=True)
    letter = _accepted_letter(text, at_start=True)
    if letter and letter in valid:
        return letter
    return _option_letter(completion, options) if options else None


def _read_choice(completion: str, options: Sequence[str]) -> tuple[str | None, str | None]:
    valid = LETTERS[: len(options)] if options else LETTERS
    marked = (_marked_letter(m, segment, valid)
              for m, segment in _marked(completion, _CHOICE_MARKER))
    return _read(marked, lambda: _unmarked_letter(completion, options, valid))


def extract_choice(completion: str, options: Sequence[str] = ()) -> str | None:
    """The letter A-D, or None. Order: answer marker, leading letter, option text."""
    return _read_choice(completion, options)[0]


def grade_choice(completion: str, gold: str, options: Sequence[str] = ()) -> Graded:
    answer, how = _read_choice(completion, options)
    return _graded(answer, how, answer == gold.strip().upper())
