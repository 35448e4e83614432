"""StrategyQA: yes/no questions that need implicit multi-step reasoning.

Originals (eladsegal/strategyqa): train.json and dev.json, JSON arrays of
objects with qid, question, a boolean answer, the facts that decide it (the
question's gold hint, as the authors showed it) and a decomposition (unused). Together they are the official labelled train
set split 90/10; the official test set has no public labels. So this
project's "train" split reads train.json and its "test" split reads dev.json.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .base import Question, Task, get_field, read_json_array


class StrategyQA(Task):
    name = "strategyqa"
    family = "yesno"
    note = ("test split = the unofficial dev.json (229 questions); "
            "official test labels are not public")

    def original_name(self, split: str) -> str:
        return {"train": "train.json", "test": "dev.json"}[split]

    def read_originals(self, directory: Path, split: str) -> list[Question]:
        path = directory / self.original_name(split)
        return [self.from_row(row, i, str(path), split)
                for i, row in enumerate(read_json_array(path))]

    def from_row(self, row: Mapping, index: int, file: str, tag: str) -> Question:
        question = get_field(row, "question", str, file, index + 1)
        answer = get_field(row, "answer", bool, file, index + 1)
        qid = row.get("qid")  # some copies lack ids; fall back to the position
        qid = qid if isinstance(qid, str) and qid else f"strategyqa-{tag}-{index}"
        facts = row.get("facts")   # optional: not every copy has them
        facts = [f.strip() for f in facts if isinstance(f, str)] if isinstance(facts, list) else []
        return Question(id=qid, text=question.strip(), gold="yes" if answer else "no",
                        solution=" ".join(f for f in facts if f))
