"""Prompt templates render exactly as string.Template would, and a bad one names its file and line;
requests are seeded in bulk as one at a time."""
import string
from pathlib import Path

import polars as pl
import pytest

from mapd.batch.config import request_seed, request_seeds
from mapd.batch.prompts import WHITESPACE, Prompt, prompts_dir

# Values a question or a completion may hold: braces (str.format's syntax) and dollars (Template's).
VALUES = {"question": "Is {x} > $5 or ${y}?", "gold": "7", "rationale": "}{ $$ {0}", "feedback": "{}",
          "student_answer": "$a", "solution": "Reference solution:\n3 {+} 4\n\n", "instruction": "{{i}}"}


@pytest.mark.parametrize("path", sorted(prompts_dir().rglob("*.txt")), ids=lambda p: p.stem)
def test_every_template_renders_as_string_template_does(path):
    prompt = Prompt(path, path.read_text())
    assert prompt.render(**VALUES) == string.Template(prompt.text).substitute(VALUES).strip()


@pytest.mark.parametrize("text", ["a $$ b ${c}d $e {x} }}", "$c$e", "  {$c}  \n"])
def test_escapes_and_braces(text):
    assert Prompt(Path("t.txt"), text).render(c="{1}", e="$2") == string.Template(text).substitute(c="{1}", e="$2").strip()


def test_errors_name_the_file():
    with pytest.raises(KeyError, match=r"t.txt: placeholder \$b has no value"):
        Prompt(Path("t.txt"), "a $b").render()
    with pytest.raises(ValueError, match=r"t.txt: line 2: a '\$' that starts no placeholder"):
        Prompt(Path("t.txt"), "a\n5 $ each").render()


@pytest.mark.parametrize("path", sorted(prompts_dir().rglob("*.txt")), ids=lambda p: p.stem)
def test_a_rendered_column_equals_rendered_strings(path):
    """The stages render a frame's rows at once; the texts are render()'s, to the byte, with
    whitespace of every kind str.strip() strips at both ends."""
    prompt = Prompt(path, path.read_text())
    names = sorted({text for text, hole in prompt.pieces if hole})
    rows = [dict(VALUES), {**dict.fromkeys(VALUES, ""), "question": "\x1c\u3000 q \u2029\x85"},
            dict.fromkeys(VALUES, " \t\n")]
    frame = pl.DataFrame([{k: r[k] for k in names} for r in rows])
    rendered = frame.select(prompt.expr(**{k: pl.col(k) for k in names})).to_series().to_list()
    assert rendered == [prompt.render(**r) for r in rows]


def test_whitespace_is_what_str_strip_strips():
    assert set(WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


def test_request_seeds_are_request_seed_for_each_request():
    """The stages seed their requests in bulk; each seed is the one request_seed gives it."""
    varying = [("a", "rationale", "q-1"), ("b", "feedback", "q-22"), ("", "", "")]
    assert request_seeds(7, ("review", "t"), varying) == [request_seed(7, "review", "t", *v) for v in varying]
    assert request_seeds(0, (), [("x",)]) == [request_seed(0, "x")]
