"""The run options every command that works on a run takes, and how they meet the run's saved
configuration: the first command that does work writes ``<run>/config.yaml``; every later
command reads it, so ``--run-dir`` alone is enough. An option given that differs from the saved
setting is refused, naming each difference, unless ``--reconfigure`` is given."""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys
from pathlib import Path

import click

from mapd.local_teachers.engine import go_offline
from mapd.training import TrainingStopped

from .config import (CONFIG_FILE, DEFAULT_STUDENT, DEMO_COMMITTEE, ENGINES, EVAL_SAMPLINGS, GOLD_HINTS, PAPER_SEED,
                     SELECTIONS, ConfigError, RunConfig)
from .graph import Graph
from .shards import StaleShardError

# Options that set a RunConfig field of the same name.
CONFIG_OPTIONS = ("task", "student", "engine", "data", "train_data", "test_data", "limit", "test_limit", "seed",
                  "num_shards", "policy", "selection", "train_preset", "gold_hint", "eval_sampling", "eval_samples")
# Options that set a field of RunConfig's policy_overrides / train_overrides, by that field's name.
POLICY_OPTIONS = ("threshold", "min_reviews", "answer_check", "review_feedback", "invalid_as")
TRAIN_OPTIONS = ("alpha", "epochs", "learning_rate", "batch_size", "max_length", "lora_r", "max_steps", "pairing")
# A new run's shards, unless --num-shards is given: small enough that a preempted or failed task
# loses a few minutes of a 70B teacher's work, big enough that loading the model (minutes) stays
# a small part of each task. GSM8K's or LogiQA's train split: 15 shards; the embedded run: 1.
QUESTIONS_PER_SHARD = 500
# Errors a user can act on: one clear line, no traceback (a full disk names its file; training
# stopped by a signal says where its checkpoint is).
USER_ERRORS = (OSError, ValueError, KeyError, StaleShardError, TrainingStopped)


def setup_logging(run_dir: Path | None, verbose: bool = False) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "logs" / "mapd.log"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)


def user_errors(f):
    """Report the errors a user can act on as one line."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except USER_ERRORS as e:
            raise click.ClickException(str(e.args[0] if isinstance(e, KeyError) else e)) from e
    return wrapper


def _given(values: dict) -> dict:
    """The RunConfig fields the options set (an option left out sets nothing)."""
    given = {k: values[k] for k in CONFIG_OPTIONS if values[k] is not None}
    if values["teachers"] is not None:
        given["teachers"] = tuple(t.strip() for t in values["teachers"].split(",") if t.strip())
    if values["no_feedback"]:
        given["feedback"] = False
    if values["keep_cut"]:
        given["keep_cut"] = True
    for field, names in (("policy_overrides", POLICY_OPTIONS), ("train_overrides", TRAIN_OPTIONS)):
        overrides = {k: values[k] for k in names if values[k] is not None}
        if overrides:
            given[field] = overrides
    return given


def resolve(run_dir: Path | None, given: dict, reconfigure: bool) -> RunConfig:
    """The run's configuration: the saved one (options must agree with it unless
    ``reconfigure``), or for a new run the options over the defaults."""
    task = given.get("task")
    if run_dir is None:
        if task is None:
            raise click.UsageError("give --run-dir, or --task for runs/<task>/default")
        run_dir = Path("runs") / task / "default"
    if not (run_dir / CONFIG_FILE).is_file():
        if task is None:
            raise click.UsageError(f"{run_dir / CONFIG_FILE} does not exist: give --task to start a new run there")
        # --limit cuts the train split alone: a new run evaluates on every test question unless told.
        cfg = RunConfig.from_dict({"test_limit": None, **given}, run_dir)
        return cfg if "num_shards" in given else dataclasses.replace(cfg, num_shards=sized_shards(cfg))
    saved = RunConfig.load(run_dir)
    merged = {**saved.to_dict(), **given}
    for field in ("policy_overrides", "train_overrides"):
        merged[field] = {**getattr(saved, field), **given.get(field, {})}
    wanted = RunConfig.from_dict(merged, run_dir)
    changed = saved.differences(wanted)
    if changed and not reconfigure:
        raise ConfigError(f"{saved.path} holds this run's configuration, and options given differ from it: "
                          f"{'; '.join(changed)}. Leave them out to use the saved settings, or add --reconfigure "
                          "to change them (`mapd plan --reconfigure ...` shows which stages would be redone)")
    return wanted


def sized_shards(cfg: RunConfig) -> int:
    """A new run's shard count when none is given: one shard per QUESTIONS_PER_SHARD questions of
    its bigger split (the exam's train split or the eval's test split)."""
    graph = Graph(cfg)
    questions = max(len(graph.one("exam").questions), *(len(s.questions) for s in graph.named("eval")))
    return max(1, math.ceil(questions / QUESTIONS_PER_SHARD))


def run_options(*, writes: bool):
    """The options of a run. The command gets the run's stage graph (``graph.cfg`` is its
    RunConfig), whose configuration is saved first when ``writes`` (a command that does work,
    once its models and settings are known to be valid); plan and report never write it."""
    def decorate(f):
        @click.option("--task", default=None, help="gsm8k | svamp | strategyqa | logiqa [a new run: required]")
        @click.option("--run-dir", type=click.Path(path_type=Path), default=None,
                      help="run directory [default: runs/<task>/default]")
        @click.option("--student", default=None, help="student model: registry name, YAML path, model folder or "
                      f"cached hub repo id [{DEFAULT_STUDENT}]")
        @click.option("--teachers", default=None, help="comma-separated committee: registry names, YAML paths, model "
                      f"folders or cached hub repo ids; one = no peer review [{','.join(DEMO_COMMITTEE)}]")
        @click.option("--engine", type=click.Choice(ENGINES), default=None, help="override every model's registry engine")
        @click.option("--data", default=None, help="task data, both splits: a folder of the original files, a data "
                      "file whose rows each have a 'split' field (train or test), or a dataset id in the local "
                      "Hugging Face cache [default: bundled]")
        @click.option("--train-data", default=None, help="the train split's own data (as --data; a file without "
                      "'split' fields is the split whole) [--data]")
        @click.option("--test-data", default=None, help="the test split's own data (as --train-data) [--data]")
        @click.option("--limit", type=click.IntRange(min=1), default=None,
                      help="the exam takes the first N questions of the train split [all]")
        @click.option("--test-limit", type=click.IntRange(min=1), default=None,
                      help="the eval takes the first N questions of the test split [all]")
        @click.option("--seed", type=int, default=None, help=f"[{PAPER_SEED}]")
        @click.option("--num-shards", type=click.IntRange(min=1), default=None,
                      help=f"[a new run: one per {QUESTIONS_PER_SHARD} questions of the bigger split]")
        @click.option("--policy", default=None, help="acceptance preset: default | paper [default]")
        @click.option("--threshold", type=float, default=None, help="accept when the mean score is above this")
        @click.option("--min-reviews", type=int, default=None, help="fewest valid reviews to accept")
        @click.option("--answer-check/--no-answer-check", default=None,
                      help="require a rationale's own final answer to equal gold")
        @click.option("--review-feedback/--no-review-feedback", default=None, help="peer-review the feedback too")
        @click.option("--invalid-as", type=int, default=None,
                      help="count a review without a usable score as this score [default: drop it]")
        @click.option("--selection", type=click.Choice(SELECTIONS), default=None,
                      help="paper: one accepted rationale and one feedback per question; all: every accepted one [paper]")
        @click.option("--no-feedback", is_flag=True, default=None, help="the no-feedback ablation: rationales only")
        @click.option("--keep-cut", is_flag=True, default=None,
                      help="review and train on completions cut at max_tokens too [dropped]")
        @click.option("--gold-hint", type=click.Choice(GOLD_HINTS), default=None,
                      help="what feedback writers and reviewers are shown: the gold answer, or the task's "
                      "worked solution where it has one [solution]")
        @click.option("--eval-sampling", type=click.Choice(EVAL_SAMPLINGS), default=None,
                      help="greedy, or the authors' sampling (temperature 0.3, top_p 0.9, seeded) [greedy]")
        @click.option("--eval-samples", type=click.IntRange(min=1), default=None,
                      help="with --eval-sampling paper: answers per question; accuracy is their mean [3]")
        @click.option("--train-preset", type=click.Choice(["qlora", "paper"]), default=None, help="[qlora]")
        @click.option("--alpha", type=float, default=None, help="weight of the feedback loss [preset: 0.5]")
        @click.option("--epochs", type=int, default=None)
        @click.option("--learning-rate", type=float, default=None)
        @click.option("--batch-size", type=int, default=None)
        @click.option("--max-length", type=int, default=None)
        @click.option("--lora-r", type=int, default=None)
        @click.option("--max-steps", type=int, default=None, help="stop training after this many steps")
        @click.option("--pairing", type=click.Choice(["on", "off"]), default=None,
                      callback=lambda ctx, param, value: None if value is None else value == "on",
                      help="a question's feedback and rationale in the same batch [on]")
        @click.option("--reconfigure", is_flag=True, help="change settings saved in the run's config.yaml")
        @click.option("-v", "--verbose", is_flag=True)
        @functools.wraps(f)
        @user_errors
        def wrapper(run_dir, reconfigure, verbose, **values):
            names = (*CONFIG_OPTIONS, "teachers", "no_feedback", "keep_cut", *POLICY_OPTIONS, *TRAIN_OPTIONS)
            given = _given({k: values.pop(k) for k in names})
            cfg = resolve(run_dir, given, reconfigure)
            setup_logging(cfg.run_dir if writes else None, verbose)
            go_offline()
            graph = Graph(cfg)
            if writes:
                cfg.save()
            return f(graph, **values)
        return wrapper
    return decorate
