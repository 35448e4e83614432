"""Prompt templates render exactly as string.Template would, and a bad one names its file and line."""
import string
from pathlib import Path

import pytest

from mapd.batch.prompts import Prompt, prompts_dir

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
