"""The run summary: per stage, what was skipped, truncated, empty or unparsed, so that nothing
is dropped silently. Written as summary.json and summary.md in the run directory."""
from __future__ import annotations

import json

from .graph import Graph
from .shards import atomic_write
from .stage import SUMMARY_COLUMNS


def run_summary(graph: Graph) -> list[dict]:
    """One line per stage, in order, up to the first that is not done."""
    lines = []
    for stage in graph:
        if stage.pending():
            break
        lines.append(stage.summary_line())
    return lines


def write_summary(graph: Graph) -> str:
    """Write summary.json and summary.md into the run directory; returns the Markdown."""
    lines = run_summary(graph)
    folder = graph.cfg.run_dir
    text = format_summary(lines)
    atomic_write(folder / "summary.json", lambda f: f.write(json.dumps(lines, indent=2).encode()))
    atomic_write(folder / "summary.md", lambda f: f.write(text.encode()))
    return text


def format_summary(lines: list[dict]) -> str:
    head = "| " + " | ".join(c.replace("_", " ") for c in SUMMARY_COLUMNS) + " |\n|" + "---|" * len(SUMMARY_COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(str(line[c]) for c in SUMMARY_COLUMNS) + " |\n" for line in lines)
