"""Prompt templates from the project's prompts/ folder (or $MAPD_PROMPTS)."""
from __future__ import annotations

import hashlib
import os
import string
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import polars as pl


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
    def pieces(self) -> tuple[tuple[str, bool], ...]:
        """The template as (text, is a placeholder name) pieces, parsed once by string.Template's
        own rules: rendering is then a join, which counts at the millions of prompts of a large
        committee."""
        out, at = [], 0
        for m in string.Template.pattern.finditer(self.text):
            if m["invalid"] is not None:
                line = self.text.count("\n", 0, m.start()) + 1
                raise ValueError(f"{self.path}: line {line}: a '$' that starts no placeholder (write $$ for '$')")
            name = m["named"] or m["braced"]
            out += [(self.text[at:m.start()], False), (name, True) if name else ("$", False)]
            at = m.end()
        return (*out, (self.text[at:], False))

    @cached_property
    def _format(self) -> str:
        return "".join("{" + text + "}" if hole else text.replace("{", "{{").replace("}", "}}")
                       for text, hole in self.pieces)

    def render(self, **values: str) -> str:
        """The template with every placeholder replaced, stripped, as ``Template.substitute``."""
        try:
            return self._format.format_map(values).strip()
        except KeyError as e:
            raise KeyError(f"{self.path}: placeholder ${e.args[0]} has no value") from None

    def expr(self, **columns: pl.Expr) -> pl.Expr:
        """``render`` as a polars expression over a frame's rows: each placeholder one column."""
        missing = sorted({text for text, hole in self.pieces if hole} - set(columns))
        if missing:
            raise KeyError(f"{self.path}: placeholder ${missing[0]} has no value")
        parts = [columns[text] if hole else pl.lit(text) for text, hole in self.pieces if hole or text]
        return pl.concat_str(parts).str.strip_chars(WHITESPACE)


# What str.strip() strips (str.isspace()), so a rendered column equals a rendered string.
WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200b))) \
    + "\u2028\u2029\u202f\u205f\u3000"


@cache
def load_prompt(role: str, family: str | None = None) -> Prompt:
    """``load_prompt("student_answer", "math")`` reads prompts/student_answer/math.txt;
    ``load_prompt("train/feedback")`` reads prompts/train/feedback.txt."""
    path = prompts_dir() / (f"{role}/{family}.txt" if family else f"{role}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"no prompt template {path}")
    return Prompt(path, path.read_text(encoding="utf-8"))
