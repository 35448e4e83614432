"""Multiple choice: a marked or declared option letter, else a lone leading letter, else the text of
exactly one option."""
from __future__ import annotations

import re
from collections.abc import Sequence

from .common import _ANSWER_WORDS, _BOX, _JOINED, Graded, _graded, _marked, _NoSingleAnswer, _read

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
