"""LogiQA (v1, English): four-option logical reasoning questions taken from
Chinese civil-service exams, machine-translated.

Originals (lgw863/LogiQA-dataset): Eval.txt and Test.txt, plain text in
8-line records: an empty line, the gold letter (a-d), the context, the
question, then the four options, normally written "A.text" .. "D.text".

The official Train.txt could not be obtained (see data/logiqa/SOURCE.txt), so
split "train" reads Eval.txt and split "test" reads Test.txt: 651 questions
each. Ids are "logiqa-eval-<n>" / "logiqa-test-<n>" with a 0-based record n.

Option prefixes in the originals are unreliable ("A Shannan", "A? Many",
"d.The ...", letters moved into the text by the translation). Options are
therefore taken by position, and a leading letter is removed only when it is
the letter expected at that position; any other text is kept as it is.
One exception: in 14 Test.txt records (e.g. the 109th, the heating-valve
question) lines 6 and 7 read "C.xxx" then "B.yyy", and the gold letter follows
those printed labels, not the line order (checked by solving several of them).
So when all four lines carry a clean "X." label and the labels are A-D out of
order, the options are put in label order first.

The datasets route expects the schema of lucasmccabe/logiqa (context, query,
options as a list of four strings without prefixes, correct_option 0-3).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from .base import Question, Task, data_error, get_field, read_text

LETTERS = "ABCD"
# A letter, then punctuation ("A." "A?" "A:" "A)" "A、") or plain spaces ("A Shannan").
_PREFIX = re.compile(r"\s*([A-Da-d])\s*(?:[.．。?？:：)、]\s*|\s+)")
_CLEAN_LABEL = re.compile(r"[A-D]\.")
_FILES = {"train": "Eval.txt", "test": "Test.txt"}


def strip_option_prefix(option: str, position: int) -> str:
    """Drop a leading "A."-style label if it names the option at `position`."""
    m = _PREFIX.match(option)
    if m and m.group(1).upper() == LETTERS[position]:
        return option[m.end():].strip()
    return option.strip()


def order_options(lines: list[str]) -> list[str]:
    """Put four option lines in label order when their "X." labels are A-D shuffled."""
    labels = [line[:1] if _CLEAN_LABEL.match(line) else "" for line in lines]
    if sorted(labels) == list(LETTERS) and labels != list(LETTERS):
        return [line for _, line in sorted(zip(labels, lines))]
    return lines


def parse_records(path: Path) -> list[dict]:
    """The 8-line records of an original file, as rows in the datasets schema."""
    raw = read_text(path)
    if raw.endswith("\n"):  # the originals have none; tolerate one in other copies
        raw = raw[:-1]
    lines = raw.split("\n")
    rows = []
    for start in range(0, len(lines), 8):
        record, number = lines[start: start + 8], start // 8 + 1
        if len(record) < 8:
            raise data_error(path, f"record has {len(record)} of 8 lines (file ends early)",
                             number, "options", line=start + 1)
        if record[0].strip():
            raise data_error(path, f"expected the empty separator line, got {record[0][:40]!r}",
                             number, "separator", line=start + 1)
        letter = record[1].strip().lower()
        if letter not in ("a", "b", "c", "d"):
            raise data_error(path, f"expected a gold letter a-d, got {record[1][:40]!r}",
                             number, "correct_option", line=start + 2)
        rows.append({
            "context": record[2],
            "query": record[3],
            "options": [strip_option_prefix(o, k)
                        for k, o in enumerate(order_options(record[4:8]))],
            "correct_option": "abcd".index(letter),
        })
    return rows


class LogiQA(Task):
    name = "logiqa"
    family = "choice"
    note = ("Train.txt could not be obtained: split 'train' reads Eval.txt and "
            "split 'test' reads Test.txt (651 questions each)")

    def original_name(self, split: str) -> str:
        return _FILES[split]

    def read_originals(self, directory: Path, split: str) -> list[Question]:
        path = directory / _FILES[split]
        tag = path.stem.lower()  # "eval" / "test": ids say which file, not which split
        return [self.from_row(row, i, str(path), tag)
                for i, row in enumerate(parse_records(path))]

    def from_row(self, row: Mapping, index: int, file: str, tag: str) -> Question:
        rownum = index + 1
        context = get_field(row, "context", str, file, rownum)
        query = get_field(row, "query", str, file, rownum)
        options = get_field(row, "options", list, file, rownum)
        if len(options) != 4 or not all(isinstance(o, str) and o.strip() for o in options):
            raise data_error(file, "expected a list of 4 non-empty strings", rownum, "options")
        gold = get_field(row, "correct_option", int, file, rownum)
        if not 0 <= gold < 4:
            raise data_error(file, f"expected 0-3, got {gold}", rownum, "correct_option")
        options = tuple(o.strip() for o in options)
        text = "\n".join([context.strip(), query.strip(),
                          *(f"{letter}. {o}" for letter, o in zip(LETTERS, options))])
        return Question(id=f"logiqa-{tag}-{index}", text=text, gold=LETTERS[gold], options=options)
