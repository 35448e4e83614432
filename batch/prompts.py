"""Prompt templates from the project's prompts/ folder (or $MAPD_PROMPTS)."""
from __future__ import annotations

import hashlib
import os
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path


def prompts_dir() -> Path:
    return Path(os.environ.get("MAPD_PROMPTS", Path(__file__).resolve().parents[1] / "prompts"))


@dataclass(frozen=True)
class Prompt:
    path: Path
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, **values: str) -> str:
        try:
            return string.Template(self.text).substitute(values).strip()
        except KeyError as e:
            raise KeyError(f"{self.path}: placeholder ${e.args[0]} has no value") from None


@cache
def load_prompt(role: str, family: str | None = None) -> Prompt:
    """``load_prompt("student_answer", "math")`` reads prompts/student_answer/math.txt;
    ``load_prompt("train/feedback")`` reads prompts/train/feedback.txt."""
    path = prompts_dir() / (f"{role}/{family}.txt" if family else f"{role}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"no prompt template {path}")
    return Prompt(path, path.read_text(encoding="utf-8"))
