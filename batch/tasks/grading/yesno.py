"""Yes/no: a stated verdict after a marker or in the closing sentence, else one opening the text."""
from __future__ import annotations

import re

from .common import _ANSWER_WORDS, _BOX, _JOINED, _SENTENCE_END, Graded, _graded, _marked, _NoSingleAnswer, _read

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
