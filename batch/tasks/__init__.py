"""Evaluation tasks: loaders for GSM8K, SVAMP, StrategyQA and LogiQA, and
their answer graders. `get_task(name)` is the entry point."""
from __future__ import annotations

from .base import DataError, MissingFileError, Question, Task, shared_questions
from .grading import Graded, Verdict
from .gsm8k import GSM8K
from .logiqa import LogiQA
from .strategyqa import StrategyQA
from .svamp import SVAMP

TASKS: dict[str, Task] = {t.name: t for t in (GSM8K(), SVAMP(), StrategyQA(), LogiQA())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


__all__ = ["TASKS", "get_task", "Task", "Question", "Graded", "Verdict",
           "DataError", "MissingFileError", "shared_questions"]
