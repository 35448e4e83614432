"""SVAMP: simple arithmetic word problems with adversarial variations.

Original (arkilpatel/SVAMP): SVAMP.json, one JSON array of 1,000 objects with
ID, Body, Question, Equation, Answer (a float) and Type. SVAMP ships no
train/test split, so this project draws one: the IDs sorted as strings are
shuffled with random.Random(731) and the first 70 % (700) are "train", the
rest (300) "test". The result is committed as split.json next to the data so
that it never silently changes; `python -m mapd.batch.tasks.svamp` regenerates it.
The Hugging Face copy ChilleD/SVAMP has the same fields and its own 700/300
split, which the datasets route uses as is.
"""
from __future__ import annotations

import json
import random
from fractions import Fraction
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import DATA_DIR, Question, Task, data_error, get_field, read_json_array, read_text
from .grading import canonical_number

SPLIT_SEED = 731
TRAIN_FRACTION = 0.7
SPLIT_FILE = "split.json"


def make_split(ids: Sequence[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """Deterministic train/test split of `ids`; each list keeps the input order."""
    order = sorted(ids)  # sort first so the split does not depend on file order
    random.Random(seed).shuffle(order)
    train = set(order[: round(len(order) * TRAIN_FRACTION)])
    return {"train": [i for i in ids if i in train],
            "test": [i for i in ids if i not in train]}


def write_split(data_file: Path = DATA_DIR / "svamp" / "SVAMP.json",
                out: Path = DATA_DIR / "svamp" / SPLIT_FILE) -> dict[str, list[str]]:
    ids = [get_field(row, "ID", str, data_file, i + 1)
           for i, row in enumerate(read_json_array(data_file))]
    split = make_split(ids)
    record = {"seed": SPLIT_SEED, "method": "sorted(IDs), random.Random(seed).shuffle, "
              "first 70% train; lists in SVAMP.json order", **split}
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return split


class SVAMP(Task):
    name = "svamp"
    family = "math"
    note = "no official split: a seeded 700/300 split recorded in batch/data/svamp/split.json"

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
        answer = get_field(row, "Answer", float, file, rownum)
        # Many Bodies are clause fragments without a final period: join with a space.
        text = f"{body.strip()} {question.strip()}"
        return Question(id=qid, text=text, gold=canonical_number(Fraction(str(answer))))


if __name__ == "__main__":
    result = write_split()
    print(f"wrote {DATA_DIR / 'svamp' / SPLIT_FILE}: "
          f"{len(result['train'])} train / {len(result['test'])} test")
