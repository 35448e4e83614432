"""The run report: one self-contained HTML page, <run>/report/index.html, with the accuracy
before and after, the committee's scores, the dataset, what each stage cost and what a
full-size run would cost, and a few example records. Figures are PNGs inlined as data URIs, so
the page can be mailed or archived alone. It reads only what the run wrote: on a partial run a
section whose inputs are missing says so."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .eval import format_accuracy
from .paper import PAPER, PAPER_SOURCE, PAPER_STUDENT, paper_differences
from .shards import atomic_write
from .stats import format_stats

EXAMPLES = 3
REASONING_EXCERPT = 1200                # characters of a reasoning model's thinking shown per example
SCORES = (1, 2, 3, 4, 5, None)          # None: no usable score (no_score or out_of_range)

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
pre {{ white-space: pre-wrap; background: #f6f6f6; padding: 0.5em; }}
.missing {{ color: #a33; font-style: italic; }}
img {{ max-width: 100%; }}
</style></head>
<body>
<h1>{title}</h1>
<p>A section or stage "not run yet" has no output of this configuration; <code>make plan</code> says why.</p>
{body}
</body></html>
"""


def write_report(graph, tokens_per_second: float) -> Path:
    """Write the page of the run whose stage graph is ``graph``; returns its path."""
    cfg = graph.cfg
    title = f"MAPD run report: {cfg.task}, {cfg.run_dir}"
    sections = [
        ("Configuration", _table(["setting", "value"], [
            ["student", cfg.student], ["teachers", ", ".join(cfg.teachers)], ["policy", cfg.policy],
            ["selection", cfg.selection], ["limit", cfg.limit or "every question"],
            ["test limit", cfg.test_limit or "every question"], ["seed", cfg.seed]])),
        ("Accuracy before and after", accuracy(graph)),
        ("The committee's reviews", reviews_section(graph)),
        ("The dataset", dataset_section(graph)),
        ("Stage timings and tokens", timings(graph)),
        ("Training", training(graph)),
        ("What a full-size run would cost", full_size_cost(graph, tokens_per_second)),
        ("Example records", examples(graph)),
    ]
    body = "\n".join(f"<h2>{_esc(name)}</h2>\n{content}" for name, content in sections)
    path = Path(cfg.run_dir) / "report" / "index.html"
    page = PAGE.format(title=_esc(title), body=body)
    atomic_write(path, lambda f: f.write(page.encode()))
    return path


# ---------------------------------------------------------------- sections

def accuracy(graph) -> str:
    path = Path(graph.cfg.run_dir) / "eval" / "results.json"
    stages = graph.named("eval")
    # results.json of an older configuration may still lie there: trust it only when both
    # eval stages of this configuration are done.
    if len(stages) < 2 or any(s.pending() for s in stages) or not path.is_file():
        return _missing("eval not run yet: no results for the base and distilled students of this configuration")
    r = json.loads(path.read_text())
    rows = [["this run", r["student"], r["test_size"], format_accuracy(r, "base"), format_accuracy(r, "distilled"),
             f"{r['base_unparseable']} / {r['distilled_unparseable']}"]]
    if r["task"] not in PAPER:
        return _table(HEADER, rows)
    base, distilled = PAPER[r["task"]]
    rows.append(["the paper", PAPER_STUDENT, "", f"{base:.2f}%", f"{distilled:.2f}%", ""])
    lines = "".join(f"<li><b>{_esc(what)}</b>: {_esc(text)}</li>" for what, text in paper_differences(graph))
    return (_table(HEADER, rows) + f"<p>The paper's figures: {_esc(PAPER_SOURCE)}. What differs between the two "
            f"rows, so they are not directly comparable:</p><ul>{lines}</ul>")


HEADER = ["", "student", "test questions", "base", "distilled", "unparseable (base / distilled)"]


def reviews_section(graph) -> str:
    reviewers = graph.named("review")
    if not reviewers:
        return _missing("one teacher: no peer review")
    done = [r for r in reviewers if not r.pending()]
    if not done:
        return _missing("review not run yet")
    note = "" if len(done) == len(reviewers) else _missing(
        f"review done for {len(done)} of {len(reviewers)} reviewers; the others are not shown")
    reviews = pl.concat([r.results() for r in done])
    return note + _img(score_heatmap(reviews), "mean score, reviewer x author") + _img(
        score_histograms(reviews), "score histograms per reviewer")


def dataset_section(graph) -> str:
    dataset = graph.one("dataset")
    if dataset.pending():
        return _missing("dataset not written yet")
    stats = dataset.stats()
    return (f"<pre>{_esc(format_stats(stats))}</pre>"
            + _img(accepted_histogram(stats), "questions by accepted rationales")
            + _img(accepted_per_teacher(stats), "accepted rationales per teacher"))


def timings(graph) -> str:
    """What the manifests of each stage that generates recorded, whichever job wrote the shards."""
    rows = []
    for stage in graph:
        f = stage.figures()
        if "generations" not in f:
            continue            # no model generates in it (dataset, train: see Training)
        done = stage.num_shards - len(stage.pending())
        if not done:
            rows.append([stage.key, "not run yet"] + [""] * 7)
            continue
        rate = f["completion_tokens"] / f["engine_seconds"] if f["engine_seconds"] else 0.0
        rows.append([stage.key, f"{done}/{stage.num_shards}", f["generations"], f["prompt_tokens"],
                     f["completion_tokens"], f["skipped_too_long"], f"{f['engine_seconds']:.1f}",
                     f"{f['wall_seconds']:.1f}", f"{rate:.1f}"])
    return _table(["stage", "shards done", "generations", "prompt tokens", "completion tokens", "skipped (too long)",
                   "engine s", "wall s", "tokens/s"], rows)


def training(graph) -> str:
    train = graph.one("train")
    reason = train.pending().get(0)
    if reason:
        return _missing(f"train not run yet: {reason}")
    card = train.card()
    counts, losses = card["counts"], card["last_epoch_mean_losses"]
    return _table(["figure", "value"], [
        ["records trained / skipped / truncated",
         f"{counts['examples']} / {counts['skipped']} / {counts['truncated']}"],
        ["steps", card["steps"]],
        ["tokens", card["train_tokens"]],
        ["train seconds", f"{card['train_seconds']:.1f}"],
        ["tokens/s", _number(card["tokens_per_second"])],
        ["padding", _percent(card["padding_fraction"])],
        ["last epoch's mean loss (feedback / rationale)",
         " / ".join(_number(losses[k], 3) for k in ("feedback", "rationale"))],
        ["device", card["device"]],
    ])


def full_size_cost(graph, tokens_per_second: float) -> str:
    """The cost model of the README's "How long it takes" (exam Q, teach 2·T·N, review T·(T-1)·N,
    eval 2 x test questions) at this run's mistake share: every count is proportional to the
    split's size, so each stage's generations scale by full split / this run's questions."""
    exam = graph.one("exam")
    if exam.pending():
        return _missing("exam not run yet: the estimate scales the run's measured figures")
    # Every stage reads the questions of one split, the exam's or the eval's.
    split = {s.split: s for s in graph if hasattr(s, "split")}
    scale = {name: len(s.split_questions) / len(s.questions) for name, s in split.items()}
    rows, total, left_out = [], 0.0, []
    for stage in graph:
        f = stage.figures()
        if "generations" not in f:
            continue
        if stage.pending() or not f["generations"]:
            left_out.append(stage.key)
            continue
        generations = f["generations"] * scale[getattr(stage, "split", "train")]
        per_generation = f["completion_tokens"] / f["generations"]
        hours = generations * per_generation / tokens_per_second / 3600
        gpus = max(stage.spec.gpus, 1)
        total += hours * gpus
        rows.append([stage.key, f"{generations:,.0f}", f"{per_generation:.0f}",
                     f"{generations * per_generation / 1e6:.2f}", f"{hours:.2f}", gpus, f"{hours * gpus:.2f}"])
    rows.append(["total", "", "", "", "", "", f"{total:.2f}"])
    answers = exam.results()
    mistakes = (answers["verdict"] != "correct").mean()
    assumptions = (
        f"Generations per stage follow the README's cost model: exam = Q train questions; teach = 2·N per teacher "
        f"(a rationale and a feedback per mistake; N without feedback); review = (T-1)·N per reviewer (twice with "
        f"review of feedback); eval = the test questions per variant. N = Q x this run's mistake share "
        f"({mistakes:.0%} of {answers.height} exam answers), so each stage's generations here are scaled by the "
        f"full split over this run's questions. Tokens per generation: this run's measured mean completion tokens "
        f"(small demo models or a short max_tokens write answers of other lengths than a real committee). "
        f"Time = generated tokens / {tokens_per_second:,.0f} tokens/s (an assumption, --tokens-per-second; the "
        f"README's example is 1,000 tokens/s for a 70B teacher on 4 GPUs, not a measurement); GPU-hours = time x the "
        f"model's registry gpus (0, a CPU model, counted as 1). Not counted: prompt processing, model loading "
        f"(minutes per job), training.")
    if left_out:
        assumptions += f" Left out, not done yet (or no generation): {', '.join(left_out)}."
    return _table(["stage", "generations", "tokens / generation", "M tokens", "hours", "GPUs", "GPU-hours"],
                  rows) + f"<p>{_esc(assumptions)}</p>"


def examples(graph) -> str:
    """The first few kept questions: what the student got wrong and what it is trained on."""
    dataset = graph.one("dataset")
    if dataset.pending():
        return _missing("dataset not written yet")
    records = pl.read_parquet(dataset.records_path)
    rationales = records.filter(pl.col("kind") == "rationale").head(EXAMPLES)
    if not rationales.height:
        return _missing("no accepted rationale: the dataset holds no record to show")
    exam = {r["question_id"]: r for r in graph.one("exam").results().iter_rows(named=True)}
    feedback = {r["question_id"]: r for r in records.filter(pl.col("kind") == "feedback").iter_rows(named=True)}
    # The thinking a reasoning model wrote before each text shown (records hold only the text).
    shown = set(rationales["question_id"])
    thought = {(r["teacher"], r["kind"], r["question_id"]): r["reasoning"] for t in graph.named("teach")
               for r in t.results().filter(pl.col("question_id").is_in(shown)).iter_rows(named=True)}
    parts = []
    for r in rationales.iter_rows(named=True):
        q, fb = exam[r["question_id"]], feedback.get(r["question_id"])
        scores = ", ".join(f"{who} {'no score' if s is None else s}"
                           for who, s in zip(r["reviewers"], r["scores"])) or "not peer-reviewed"
        parts.append(
            f"<h3>{_esc(r['question_id'])}</h3>"
            f"<p><b>Question</b> (gold: {_esc(q['gold'])})</p><pre>{_esc(q['question'])}</pre>"
            f"<p><b>Student's answer</b> ({_esc(q['verdict'])})</p>"
            f"{_reasoning(q['reasoning'])}<pre>{_esc(q['completion'])}</pre>"
            + (f"<p><b>Feedback</b> by {_esc(fb['teacher'])}</p>"
               f"{_reasoning(thought.get((fb['teacher'], 'feedback', fb['question_id'])))}"
               f"<pre>{_esc(fb['response'])}</pre>" if fb else "")
            + f"<p><b>Accepted rationale</b> by {_esc(r['teacher'])}; scores: {_esc(scores)}; "
              f"mean {_esc(_number(r['mean_score']))}</p>"
              f"{_reasoning(thought.get((r['teacher'], 'rationale', r['question_id'])))}"
              f"<pre>{_esc(r['response'])}</pre>")
    return "\n".join(parts)


def _reasoning(text: str | None) -> str:
    """A reasoning model's thinking before a text, folded: its start and its end, where it
    reaches the answer, when it is long; nothing for a model that does not think."""
    if text is None:
        return ""
    half = REASONING_EXCERPT // 2
    excerpt = text if len(text) <= REASONING_EXCERPT else \
        f"{text[:half]}\n[... {len(text) - 2 * half:,} characters left out ...]\n{text[-half:]}"
    return (f"<details><summary>reasoning ({len(text):,} characters, not trained on)</summary>"
            f"<pre>{_esc(excerpt)}</pre></details>")


# ---------------------------------------------------------------- figures

def score_heatmap(reviews: pl.DataFrame) -> Figure:
    """Mean valid score each reviewer gave each author's rationales: who is lenient with whom.
    The diagonal stays empty: nobody reviews their own work."""
    scored = reviews.filter(pl.col("kind") == "rationale")
    names = sorted(set(scored["reviewer"]) | set(scored["author"]))
    means = {(r, a): m for r, a, m in scored.group_by("reviewer", "author")
             .agg(pl.col("score").cast(pl.Float64).mean()).iter_rows()}
    grid = [[means.get((r, a)) for a in names] for r in names]
    fig = Figure(figsize=(2 + 1.4 * len(names), 1.5 + 1.1 * len(names)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow([[float("nan") if v is None else v for v in row] for row in grid], vmin=1, vmax=5, cmap="viridis")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            label = "" if i == j else "no score" if v is None else f"{v:.2f}"
            ax.text(j, i, label, ha="center", va="center", color="grey" if v is None else "w")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("author")
    ax.set_ylabel("reviewer")
    fig.colorbar(image, ax=ax, label="mean score")
    return fig


def score_histograms(reviews: pl.DataFrame) -> Figure:
    """Per reviewer, how often it gave each score, and how often no usable one."""
    reviewers = sorted(set(reviews["reviewer"]))
    fig = Figure(figsize=(1 + 3 * len(reviewers), 2.8), layout="constrained")
    axes = fig.subplots(1, len(reviewers), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, reviewers):
        scores = reviews.filter(pl.col("reviewer") == name)["score"].to_list()
        ax.bar(range(len(SCORES)), [scores.count(s) for s in SCORES], color=["C0"] * 5 + ["grey"],
               tick_label=["none" if s is None else str(s) for s in SCORES])
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("score")
    axes[0].set_ylabel("reviews")
    return fig


def accepted_histogram(stats: dict) -> Figure:
    """Questions by how many teachers' rationales were accepted; 0 = the question is dropped."""
    counts = stats["questions_by_accepted_rationales"]
    fig = Figure(figsize=(4, 2.8), layout="constrained")
    ax = fig.subplots()
    ax.bar([int(k) for k in counts], list(counts.values()))
    ax.set_xticks([int(k) for k in counts])
    ax.set_xlabel("accepted rationales")
    ax.set_ylabel("mistaken questions")
    return fig


def accepted_per_teacher(stats: dict) -> Figure:
    per = stats["accepted_per_teacher"]
    x = range(len(per))
    fig = Figure(figsize=(1.5 + 1.5 * len(per), 2.8), layout="constrained")
    ax = fig.subplots()
    ax.bar([i - 0.2 for i in x], [v["written"] for v in per.values()], 0.4, label="written")
    ax.bar([i + 0.2 for i in x], [v["accepted"] for v in per.values()], 0.4, label="accepted")
    ax.set_xticks(list(x), list(per), rotation=20, ha="right")
    ax.set_ylabel("rationales")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    return fig


# ---------------------------------------------------------------- helpers

def _img(fig: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<p><img alt="{_esc(alt)}" src="data:image/png;base64,{data}"></p>'


def _table(header: list, rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _missing(text: str) -> str:
    return f'<p class="missing">{_esc(text)}</p>'


def _esc(value) -> str:
    return html.escape(str(value))


def _number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"
