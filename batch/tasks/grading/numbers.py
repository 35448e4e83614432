"""Numbers: the last marked number (fractions, mixed numbers, `=` chains, small numbers in words),
else the last number in the text."""
from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction

from .common import _MARKER, Graded, _graded, _marked, _NoSingleAnswer, _read

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
_TOLERANCE = Fraction(1, 10**6)
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
        sign, num, den, whole = m.group("fsign"), m.group("fnum"), m.group("fden"), None
    else:
        sign, num, den, whole = m.group("sign"), m.group("num"), m.group("den"), m.group("whole")
    if max(len(part) for part in (num, den, whole) if part) > _MAX_DIGITS:
        return None
    value = _exact(num)
    if den is not None:
        divisor = _exact(den)
        if divisor == 0:
            return None
        value /= divisor
    if whole is not None:
        value += _exact(whole)
    return -value if sign else value


def _exact(part: str) -> Fraction:
    digits = part.replace(",", "")
    # A whole number (the usual answer) skips Decimal, which costs several times more.
    return Fraction(int(digits)) if digits.isdecimal() else Fraction(Decimal(digits))


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


def _read_number(completion: str) -> tuple[Fraction | None, str | None]:
    text = completion
    for old, new in _NUMBER_CLEANUP:
        text = text.replace(old, new)
    return _read((_marked_number(segment) for _, segment in _marked(text, _MARKER)), lambda: _last_number(text))


def extract_number(completion: str) -> str | None:
    """Canonical final number of a completion, or None if it holds no number."""
    value, _ = _read_number(completion)
    return None if value is None else canonical_number(value)


@functools.lru_cache(maxsize=65536)
def _gold_value(gold: str) -> Fraction:
    """A gold answer's value, read once: every teacher's rationale and every sample of a question
    is graded against the same gold."""
    return Fraction(Decimal(canonical_number(gold)))


def grade_number(completion: str, gold: str) -> Graded:
    value, how = _read_number(completion)
    if value is None:
        return _graded(None, None, False)
    answer = canonical_number(value)
    # Compared as stated: the canonical text, rounded to 9 decimals (a whole number is already exact).
    stated = value if value.denominator == 1 else Fraction(Decimal(answer))
    return _graded(answer, how, abs(stated - _gold_value(gold)) <= _TOLERANCE)
