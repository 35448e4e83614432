"""What every answer family shares: the verdict, the graded result, the answer markers and the
reading of the text after them."""
from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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
