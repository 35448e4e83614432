"""Time each stage of an embedded run spends outside the engine and training calls (the goal:
under 2% of the stage).

    .venv/bin/python bench/stage_overhead.py [--run-dir DIR] [--task svamp] [--limit 8] [--max-steps 4]

Without --run-dir, a new run in a temporary folder; with a --run-dir holding a run, that run as
its config.yaml says, finishing whatever is not done (nothing, for a finished run) and reporting.
The run is the pipeline of `mapd distill` (exam -> teach -> review -> dataset -> train -> eval,
one engine pool), with the paper's acceptance policy (the demo committee never reaches gold).

Per model stage, the figures its shards recorded in their manifests (`Stage.figures()`): wall
seconds = the shards' rows() and writing, engine seconds = inside the engine's generate;
outside = the rest (rendering prompts, tokenizing, grading, parsing, Parquet and manifests).
Model loading is in neither. Train: the adapter card's wall_seconds against its train_seconds
(the optimizer steps); its outside part includes loading and quantizing the model. Dataset:
no engine, all bookkeeping: its wall time against the whole run's.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click
from common import open_run, quiet_logging

from mapd.batch.local import run_local
from mapd.local_teachers.pool import EnginePool


def timed(fn, into: dict, key: str):
    def run(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into[key] = time.perf_counter() - t0
    return run


@click.command()
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="a run to report on (finished first if it is not) or a new run's folder [default: a temporary one]")
@click.option("--task", default="svamp", show_default=True, help="for a new run")
@click.option("--limit", default=8, show_default=True, help="questions, for a new run")
@click.option("--max-steps", default=4, show_default=True, help="training steps, for a new run")
def main(run_dir, task, limit, max_steps):
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="mapd-bench-overhead-"))
    p = open_run(run_dir, task=task, limit=limit, policy="paper", train_overrides={"max_steps": max_steps})
    quiet_logging(run_dir)
    todo = [label for label, reason in p.plan() if reason]
    dataset_todo = "dataset" in todo
    times: dict[str, float] = {}
    dataset = p.one("dataset")
    dataset.make = timed(dataset.make, times, "dataset")
    with EnginePool() as pool:
        t0 = time.perf_counter()
        run_local(p, pool)
        times["run"] = time.perf_counter() - t0
    if not dataset_todo:       # done before: time its work again, without writing
        t0 = time.perf_counter()
        dataset.select(dataset.decisions())
        times["dataset"] = time.perf_counter() - t0

    print(f"\ntime outside the engine and training calls, {run_dir} ({p.cfg.task}, {p.cfg.limit} questions), "
          f"{os.cpu_count()} CPUs")
    print("| stage | wall s | engine / training s | outside s | outside |")
    print("|---|---|---|---|---|")
    stages = [s.figures() for s in p if s.sharded]          # the stages that generate
    for f in stages:
        outside = f["wall_seconds"] - f["engine_seconds"]
        print(f"| {f['stage']} ({f['generations']} generations) | {f['wall_seconds']:.1f} | {f['engine_seconds']:.1f} | "
              f"{outside:.2f} | {outside / f['wall_seconds']:.2%} |")
    card = p.one("train").card()
    outside = card["wall_seconds"] - card["train_seconds"]
    print(f"| train ({card['steps']} steps, with model load) | {card['wall_seconds']:.1f} | {card['train_seconds']:.1f} | "
          f"{outside:.2f} | {outside / card['wall_seconds']:.2%} |")
    walls = sum(f["wall_seconds"] for f in stages) + card["wall_seconds"] + times["dataset"]
    print(f"| dataset{'' if dataset_todo else ' (re-timed: decisions and selection, not written)'} | "
          f"{times['dataset']:.2f} | - | {times['dataset']:.2f} | {times['dataset'] / walls:.2%} of the stages' wall |")
    engine = sum(f["engine_seconds"] for f in stages) + card["train_seconds"]
    print(f"all stages: {walls:.1f} s, of which {walls - engine:.1f} s ({(walls - engine) / walls:.2%}) outside "
          f"the engine and training calls")
    print(f"this process ran {', '.join(todo) or 'nothing (all done before)'} in {times['run']:.1f} s, "
          f"{pool.loads} model load(s)" + (f"; {times['run'] - walls:.1f} s beyond the stages' wall (model loads, "
                                            f"stage set-up, input checks)" if len(todo) == len(p.plan()) else ""))


if __name__ == "__main__":
    main()
