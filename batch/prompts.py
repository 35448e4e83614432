"""Prompt templates from the project's prompts/ folder (or $MAPD_PROMPTS)."""
from __future__ import annotations

import hashlib
import os
import string
from dataclasses import dataclass
from functools import cache, cached_property
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

    @cached_property
    def format_string(self) -> str:
        """The template as a str.format string, parsed once by string.Template's own rules:
        rendering is then one C call, which counts at the millions of prompts of a large committee."""
        out, at = [], 0
        for m in string.Template.pattern.finditer(self.text):
            if m["invalid"] is not None:
                line = self.text.count("\n", 0, m.start()) + 1
                raise ValueError(f"{self.path}: line {line}: a '$' that starts no placeholder (write $$ for '$')")
            name = m["named"] or m["braced"]
            out += [_literal(self.text[at:m.start()]), "{" + name + "}" if name else "$"]
            at = m.end()
        return "".join(out) + _literal(self.text[at:])

    def render(self, **values: str) -> str:
        """The template with every placeholder replaced, stripped, as ``Template.substitute``."""
        try:
            return self.format_string.format_map(values).strip()
        except KeyError as e:
            raise KeyError(f"{self.path}: placeholder ${e.args[0]} has no value") from None


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@cache
def load_prompt(role: str, family: str | None = None) -> Prompt:
    """``load_prompt("student_answer", "math")`` reads prompts/student_answer/math.txt;
    ``load_prompt("train/feedback")`` reads prompts/train/feedback.txt."""
    path = prompts_dir() / (f"{role}/{family}.txt" if family else f"{role}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"no prompt template {path}")
    return Prompt(path, path.read_text(encoding="utf-8"))
