"""GSM8K: grade-school math word problems (openai/grade-school-math).

Originals: train.jsonl / test.jsonl, one {"question", "answer"} object per
line; the answer is a worked solution whose last line is "#### <number>". The solution, without
that line and without its calculator annotations ("<<48/2=24>>"), is the question's gold hint.
The Hugging Face copy (openai/gsm8k, config "main") has the same fields.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from .base import Question, Task, data_error, get_field, read_jsonl

_GOLD = re.compile(r"-?\d+(?:\.\d+)?")
_CALCULATOR = re.compile(r"<<[^<>]*>>")


class GSM8K(Task):
    name = "gsm8k"
    family = "math"
    note = ""
    hf_configs = {"openai/gsm8k": "main", "gsm8k": "main"}

    def original_name(self, split: str) -> str:
        return f"{split}.jsonl"

    def read_originals(self, directory: Path, split: str) -> list[Question]:
        path = directory / self.original_name(split)
        return [self.from_row(row, i, str(path), split) for i, row in read_jsonl(path)]

    def from_row(self, row: Mapping, index: int, file: str, tag: str) -> Question:
        question = get_field(row, "question", str, file, index + 1)
        answer = get_field(row, "answer", str, file, index + 1)
        if "####" not in answer:
            raise data_error(file, "no '####' final-answer line", index + 1, "answer")
        # Golds are written with thousands separators now and then ("1,080").
        steps, gold = answer.rsplit("####", 1)
        gold = gold.strip().replace(",", "")
        if not _GOLD.fullmatch(gold):
            raise data_error(file, f"gold after '####' is not a number: {gold!r}",
                             index + 1, "answer")
        return Question(id=f"gsm8k-{tag}-{index}", text=question.strip(), gold=gold,
                        solution=_CALCULATOR.sub("", steps).strip())
