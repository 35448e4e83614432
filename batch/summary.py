"""The run summary: per stage, what was skipped, truncated, empty or unparsed, so that nothing
is dropped silently. Written as summary.json and summary.md in the run directory."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from .shards import atomic_write

COLUMNS = ("stage", "rows", "prompt_too_long", "hit_max_tokens", "empty", "parse_failures", "note")


def generation_counts(label: str, df: pl.DataFrame) -> dict:
    """Counts over a model stage's rows. A parse failure is an answer the grader could not read
    (exam, teach, eval) or a review without a usable score."""
    generated = df.filter(pl.col("finish_reason") != "prompt_too_long")
    if "score_status" in df.columns:
        failures = int((df["score_status"] != "ok").sum())
    else:
        failures = int((df["verdict"] == "unparseable").sum())
    return {
        "stage": label, "rows": df.height,
        "prompt_too_long": df.height - generated.height,
        "hit_max_tokens": int((df["finish_reason"] == "length").sum()),
        "empty": int((generated["completion"].str.strip_chars() == "").sum()),
        "parse_failures": failures, "note": "",
    }


def run_summary(pipeline) -> list[dict]:
    """One line per stage of ``pipeline`` that has finished; later stages are left out."""
    lines = []
    for stage in pipeline.model_stages():
        if stage.pending():
            return lines
        lines.append(generation_counts(stage.label, stage.results()))
    if pipeline.dataset.pending():
        return lines
    stats = pipeline.dataset.run()          # done: reads its stats
    dropped = stats["mistakes"] - stats["questions_kept"]
    lines.append({"stage": "dataset", "rows": sum(stats["records"].values()), "prompt_too_long": 0,
                  "hit_max_tokens": 0, "empty": 0, "parse_failures": 0,
                  "note": f"{stats['rationales'] - stats['rationales_accepted']} rationales rejected; "
                          f"{dropped} of {stats['mistakes']} mistaken questions dropped (no accepted rationale)"})
    if pipeline.train.pending():
        return lines
    card = json.loads((pipeline.train.adapter / "card.json").read_text())
    counts = card["counts"]
    lines.append({"stage": "train", "rows": counts["examples"], "prompt_too_long": counts["skipped"],
                  "hit_max_tokens": counts["truncated"], "empty": 0, "parse_failures": 0,
                  "note": f"{counts['skipped']} records skipped, {counts['truncated']} truncated to max length; "
                          f"{card['resumes']} resumes after a stop"})
    for stage in (pipeline.eval_base, pipeline.eval_distilled()):
        if stage.pending():
            return lines
        lines.append(generation_counts(stage.label, stage.results()))
    return lines


def write_summary(pipeline) -> str:
    """Write summary.json and summary.md into the run directory; returns the Markdown."""
    lines = run_summary(pipeline)
    folder = Path(pipeline.cfg.run_dir)
    text = format_summary(lines)
    atomic_write(folder / "summary.json", lambda f: f.write(json.dumps(lines, indent=2).encode()))
    atomic_write(folder / "summary.md", lambda f: f.write(text.encode()))
    return text


def format_summary(lines: list[dict]) -> str:
    head = "| " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(str(line[c]) for c in COLUMNS) + " |\n" for line in lines)
