"""``mapd import`` (a committee's outputs from a file) and ``mapd export`` (a run's records for other
trainers, or its committee's outputs as such a file). ``COMMANDS`` lists them; mapd/cli.py adds
them to the ``mapd`` group."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from ..config import ConfigError
from ..graph import Graph, format_plan
from ..options import run_options, setup_logging, sized_shards
from ..shards import atomic_write, file_sha256
from . import committee_file, records
from .stages import FromFile


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@run_options(writes=False)
def import_committee(graph, file):
    """Write a run's exam, teach and review shards from FILE, a committee's outputs written elsewhere
    (JSON Lines, README "Bring your own teacher outputs"); then `mapd distill --run-dir R` runs the
    dataset, train and eval stages on them. The file's teachers are the run's committee."""
    given = click.get_current_context().params
    cfg = graph.cfg
    if cfg.path.is_file() and cfg.imported is None and not given["reconfigure"]:
        raise ConfigError(f"{cfg.path}: this run's committee outputs are its models' own; add --reconfigure to "
                          f"replace them with {file}'s")
    if given["teachers"] is not None:
        raise click.UsageError(f"the committee is {file}'s teachers (those of its first line): leave --teachers out")
    new = not cfg.path.is_file()
    cfg = dataclasses.replace(cfg, teachers=committee_file.committee(file),
                              imported={"file": str(file.resolve()), "sha256": file_sha256(file)})
    if new and given["num_shards"] is None:
        cfg = dataclasses.replace(cfg, num_shards=sized_shards(cfg))
    graph = Graph(cfg)
    committee = graph.one("exam").committee_file     # the whole file is checked before anything is written
    setup_logging(cfg.run_dir, given["verbose"])
    cfg.save()
    for stage in graph:
        if isinstance(stage, FromFile):
            click.echo(stage.outcome(stage.run()))
    click.echo(f"{committee.describe()}\n{format_plan(graph.plan())}\n"
               f"next: mapd distill --run-dir {cfg.run_dir} (dataset, train, eval)")


@click.command()
@run_options(writes=False)
@click.option("--format", "fmt", type=click.Choice([*records.FORMATS, "committee"]), required=True,
              help="records for TRL (messages, prompt-completion), axolotl (messages, alpaca) or LLaMA-Factory "
                   "(alpaca); committee: the committee's outputs as a file `mapd import` reads")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="[<run>/export/<format>.jsonl]")
def export(graph, fmt, out):
    """Write the run's instruction records for another trainer, or its committee's outputs, as JSON Lines."""
    rows = committee_file.lines(graph) if fmt == "committee" else records.lines(graph.one("dataset"), fmt)
    out = out or graph.cfg.run_dir / "export" / f"{fmt}.jsonl"
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write(out, lambda f: f.write(text.encode()))
    click.echo(f"{len(rows)} lines written to {out}")


COMMANDS = [import_committee, export]
