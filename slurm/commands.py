"""`mapd submit` and `mapd status`: the SLURM executor's commands (``COMMANDS``, added to the
`mapd` group by mapd/cli.py)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from mapd.batch.graph import NAMES
from mapd.batch.options import run_options, user_errors

from .resources import SlurmOptions


def _stages(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    stages = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = [s for s in stages if s not in NAMES]
    if unknown:
        raise click.BadParameter(f"unknown stage(s) {unknown}; choose from {', '.join(NAMES)}", param_hint="--stages")
    return stages


@click.command()
@run_options(writes=True)
@click.option("--shard", type=click.IntRange(min=0), default=None,
              help="submit only this shard of each sharded stage (and no stage that reads every shard)")
@click.option("--partition", default=None,
              help="SLURM partition of every job [default: the model's, else the cluster's]")
@click.option("--account", default=None, help="SLURM account to charge")
@click.option("--qos", default=None, help="SLURM quality of service")
@click.option("--time", "time_limit", default="4:00:00", show_default=True,
              help="time limit of a job whose model entry sets none (SLURM format)")
@click.option("--mem", default=None,
              help="memory of a job whose model entry sets none (e.g. 32G) [default: the cluster's]")
@click.option("--cpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPUs of a job whose model entry sets none")
@click.option("--gpus-per-node", type=click.IntRange(min=0), default=None,
              help="GPUs of the biggest node, to refuse bigger requests [default: read from `scontrol show node`]")
@click.option("--signal-lead", type=click.IntRange(min=1), default=300, show_default=True,
              help="seconds before the time limit at which a task stops and requeues itself")
@click.option("--max-requeues", type=click.IntRange(min=0), default=3, show_default=True,
              help="times a task may requeue itself before it gives up")
@click.option("--stages", "stage_list", default=None,
              help=f"submit only these kinds of stage ({','.join(NAMES)}); their inputs must be done or "
                   "submitted with them [default: all]")
@click.option("--array-limit", type=click.IntRange(min=1), default=None, help="run at most N tasks of an array at once")
@click.option("--sbatch-arg", "sbatch_args", multiple=True,
              help="extra sbatch option for every job, e.g. --constraint=a100")
@click.option("--setup", "setup_lines", multiple=True, metavar="LINE",
              help="a shell line each job runs before its stage, e.g. 'module load cuda/12.4' (repeatable, in order)")
@click.option("--container", type=click.Path(exists=True, resolve_path=True), default=None, metavar="IMAGE",
              help="run each stage inside this Apptainer image (apptainer exec --nv), with the run dir, the "
                   "models and the cache bound; the image provides `mapd`")
@click.option("--dry-run", is_flag=True, help="write the scripts and show what would be submitted; submit nothing")
def submit(graph, shard, partition, account, qos, time_limit, mem, cpus, gpus_per_node, signal_lead, max_requeues,
           stage_list, array_limit, sbatch_args, setup_lines, container, dry_run):
    """Submit the run to SLURM: one array job per stage over the shards not done, chained with
    afterok; each task runs `mapd run-stage` from the run's config.yaml. Scripts in
    <run dir>/slurm/, logs in <run dir>/logs/."""
    from .submit import submit as submit_jobs

    opts = SlurmOptions(partition=partition, account=account, qos=qos, time=time_limit, mem=mem, cpus=cpus,
                        gpus_per_node=gpus_per_node, signal_lead=signal_lead, max_requeues=max_requeues,
                        stages=_stages(stage_list), array_limit=array_limit, sbatch_args=tuple(sbatch_args),
                        setup=tuple(setup_lines), container=container, dry_run=dry_run)
    planned = submit_jobs(graph, opts, None if shard is None else [shard])
    run_dir = graph.cfg.run_dir
    if not planned:
        click.echo(f"nothing to submit: every selected stage of {run_dir} is done")
        return
    for p in planned:
        what = f"array {','.join(map(str, p.job.todo))} of {p.job.num_shards}" if p.job.sharded else "one job"
        after = f", after {':'.join(p.dependency)}" if p.dependency else ""
        job = "would submit" if dry_run else f"job {p.job_id}"
        click.echo(f"{p.job.label}: {job} ({what}{after}) {p.script}")
    if dry_run:
        click.echo("dry run: scripts written, nothing submitted")
    else:
        click.echo(f"{len(planned)} job(s) submitted; ids in {run_dir}/slurm/jobs.json; "
                   f"follow with: mapd status --run-dir {run_dir}")


@click.command()
@click.option("--task", default=None, help="the run's task, for the default run directory")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="run directory [default: runs/<task>/default]")
@click.option("--wait", is_flag=True, help="wait until no job is pending or running")
@click.option("--interval", type=float, default=5.0, show_default=True, help="seconds between checks with --wait")
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
@user_errors
def status(task, run_dir, wait, interval, as_json):
    """Shards done per stage of a run (from its outputs), and for a run submitted to SLURM its
    jobs: pending, running, failed (with their logs), and dependents cancelled."""
    from .status import format_status, run_status, wait_for

    if run_dir is None:
        if task is None:
            raise click.UsageError("give --run-dir, or --task for runs/<task>/default")
        run_dir = Path("runs") / task / "default"
    result = wait_for(run_dir, interval) if wait else run_status(run_dir)
    click.echo(json.dumps(result, indent=2) if as_json else format_status(result))
    if wait and not result["done"] and (result["counts"]["failed"] or result["counts"]["cancelled"]):
        raise SystemExit(1)


COMMANDS = [submit, status]
