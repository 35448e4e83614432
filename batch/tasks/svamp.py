"""SVAMP: simple arithmetic word problems with adversarial variations.

Original (arkilpatel/SVAMP): SVAMP.json, one JSON array of 1,000 objects with
ID, Body, Question, Equation, Answer (a float) and Type. SVAMP itself ships no
train/test split; the MAPD paper uses the 700/300 split of the Hugging Face
copy ChilleD/SVAMP, and so does this project. split.json next to the data holds
that split's IDs (train and test, each in ChilleD's row order), copied from a
public dump of ChilleD/SVAMP (provenance in batch/data/svamp/SOURCE.txt), so the
bundled route reads the same IDs in the same order as the datasets route, which
loads ChilleD/SVAMP from a local cache and uses its splits as they are (its Answer a
float, or the same number as text).
"""
from __future__ import annotations

import json
from fractions import Fraction
from collections.abc import Mapping
from pathlib import Path

from .base import DATA_DIR, Question, Task, data_error, get_field, read_json_array, read_text
from .grading import canonical_number

SPLIT_FILE = "split.json"


class SVAMP(Task):
    name = "svamp"
    family = "math"
    note = "the paper's split: ChilleD/SVAMP's 700 train / 300 test IDs, in batch/data/svamp/split.json"

    def original_name(self, split: str) -> str:
        return "SVAMP.json"

    def read_originals(self, directory: Path, split: str) -> list[Question]:
        path = directory / "SVAMP.json"
        questions = [self.from_row(row, i, str(path), split)
                     for i, row in enumerate(read_json_array(path))]
        # A fresher copy may bring its own split.json; otherwise use ours.
        split_path = directory / SPLIT_FILE
        if not split_path.is_file():
            split_path = DATA_DIR / "svamp" / SPLIT_FILE
        try:
            wanted = json.loads(read_text(split_path))[split]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise data_error(split_path, "not a JSON object with 'train' and 'test' ID lists",
                             field=split) from None
        by_id = {q.id: q for q in questions}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise data_error(split_path, f"{len(missing)} IDs not in {path}, e.g. {missing[0]!r}",
                             field=split)
        return [by_id[i] for i in wanted]

    def from_row(self, row: Mapping, index: int, file: str, tag: str) -> Question:
        rownum = index + 1
        qid = get_field(row, "ID", str, file, rownum)
        body = get_field(row, "Body", str, file, rownum)
        question = get_field(row, "Question", str, file, rownum)
        raw = row.get("Answer")
        if isinstance(raw, str):  # a float in SVAMP.json and ChilleD/SVAMP; CSV and some exports write "51.0"
            try:
                answer = Fraction(raw.strip())
            except ValueError:
                raise data_error(file, f"expected a number, got {raw!r}", rownum, "Answer") from None
        else:
            answer = Fraction(str(get_field(row, "Answer", float, file, rownum)))
        # Many Bodies are clause fragments without a final period: join with a space.
        text = f"{body.strip()} {question.strip()}"
        return Question(id=qid, text=text, gold=canonical_number(answer))

