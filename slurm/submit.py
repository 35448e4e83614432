"""Submit a run to SLURM: one sbatch script per stage of the stage graph, written under
``<run dir>/slurm/``, submitted as array jobs over the shards still to do and chained with
``--dependency=afterok``; the job ids are recorded in ``<run dir>/slurm/jobs.json``.

Everything is checked before the first sbatch (names, model folders, GPUs and CPUs per node,
resource formats, jobs of an earlier submission still queued); if an sbatch fails midway,
the jobs already submitted are cancelled, so a submission is whole or nothing.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mapd.batch.graph import NAMES, Graph
from mapd.batch.shards import atomic_write, file_sha256, umask
from mapd.local_teachers.registry import cache_dir, require_local

from .cluster import TERMINAL, NodeLimits, SubmitError, node_limits, query_jobs, slurm_command
from .jobs import Job, array_spec, read_jobs, run_jobs, write_jobs
from .resources import SAFE_PATH, Resources, SlurmOptions, check_name, check_text, resources
from .script import render_script, stage_command

log = logging.getLogger(__name__)


@dataclass
class Planned:
    job: Job
    resources: Resources
    script: Path
    log_pattern: str
    text: str
    command: list[str] = field(default_factory=list)
    job_id: str | None = None
    dependency: list[str] = field(default_factory=list)


def _active_jobs(record: dict) -> list[str]:
    """Job ids of earlier submissions that SLURM still has queued or running."""
    ids = [j["job_id"] for s in record.get("submissions", []) for j in s["jobs"]]
    if not ids:
        return []
    active = []
    for job_id, tasks in query_jobs(ids).items():
        states = {t["state"] for t in tasks}
        if any(s not in TERMINAL for s in states):
            active.append(job_id)
    return active


def _select(jobs: list[Job], stages: tuple[str, ...] | None) -> list[Job]:
    """The jobs of the kinds of stage in ``stages`` (all when None); their inputs must be done
    or among them."""
    if stages is None:
        return jobs
    unknown = set(stages) - set(NAMES)
    if unknown:
        raise SubmitError(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(NAMES)}")
    by_key = {j.key: j for j in jobs}
    chosen = [j for j in jobs if j.stage.name in stages]
    for job in chosen:
        if job.done:
            continue
        for need in job.needs:
            up = by_key[need]
            if up.stage.name not in stages and not up.done:
                left = array_spec(up.todo) if up.sharded else "all"
                raise SubmitError(f"{job.label} needs {up.label}, which is not done (shards {left}) and not "
                                  f"among the stages submitted ({','.join(stages)}): add it, or run it first")
    return chosen


def prepare(graph: Graph, opts: SlurmOptions, shards: list[int] | None = None) -> list[Planned]:
    """Check everything and build the scripts of the jobs to submit (nothing is written)."""
    cfg = graph.cfg
    workdir = os.getcwd()
    run_dir = Path(cfg.run_dir)
    abs_run = run_dir if run_dir.is_absolute() else Path(workdir) / run_dir
    check_name(str(abs_run), "run directory", SAFE_PATH)
    check_name(workdir, "working directory (jobs start there)", SAFE_PATH)
    for value, what in ((cfg.student, "student"), (",".join(cfg.teachers), "teachers"), (cfg.data or "", "data")):
        check_text(value, what)
    jobs = _select(run_jobs(graph, shards), opts.stages)
    for job in jobs:
        if job.spec is not None:
            check_name(job.spec.name, "model name")
    todo = [j for j in jobs if not j.done]
    if not todo:
        return []
    binds = _container_binds(graph, abs_run, opts) if opts.container else []

    planned = []
    for job in todo:
        if job.spec is not None:
            try:
                require_local(job.spec)
            except FileNotFoundError as e:
                raise SubmitError(f"{job.label}: {e}") from e
        res = resources(job, opts)
        log_name = f"{job.key}-%A_%a.log" if job.sharded else f"{job.key}-%j.log"
        planned.append(Planned(job, res, abs_run / "slurm" / f"{job.key}.sbatch", str(abs_run / "logs" / log_name),
                               "", command=stage_command(abs_run, job.stage.key, opts, res.gpus, binds)))

    limits: dict[str | None, NodeLimits | None] = {}
    for p in planned:
        part = p.resources.partition
        if part not in limits:
            if opts.gpus_per_node is not None:
                limits[part] = NodeLimits(opts.gpus_per_node, 0, "--gpus-per-node")
            elif opts.dry_run and shutil.which("scontrol") is None:
                limits[part] = None      # a dry run away from a cluster: nothing to check against
            else:
                limits[part] = node_limits(part)
        node = limits[part]
        if node is None:
            continue
        if p.resources.gpus > node.gpus:
            raise SubmitError(
                f"{p.job.label} asks for {p.resources.gpus} GPU(s) on one node (gpus: {p.resources.gpus} in "
                f"{p.job.spec.source}), but a node has at most {node.gpus} ({node.source}); "
                "use a partition with bigger nodes (--partition) or a smaller tensor-parallel size")
        if node.cpus and p.resources.cpus > node.cpus:
            raise SubmitError(f"{p.job.label} asks for {p.resources.cpus} CPUs, but a node has at most "
                              f"{node.cpus} ({node.source})")

    for p in planned:
        p.text = render_script(p.job, p.resources, opts, command=p.command, log_pattern=p.log_pattern,
                               workdir=workdir, script=p.script)
    return planned


def _container_binds(graph: Graph, run_dir: Path, opts: SlurmOptions) -> list[str]:
    """What a stage in the container must see at the same paths as here: the run dir, every model
    folder of the run and the cache; the image must exist (checked here, not on a node later)."""
    if not Path(opts.container).is_absolute() or not Path(opts.container).exists():
        raise SubmitError(f"container image {opts.container} does not exist or is not an absolute path "
                          "(--container: an Apptainer .sif file or sandbox folder)")
    binds = sorted({str(run_dir), *(s.spec.path for s in graph if s.spec is not None),
                    *([str(cache_dir())] if cache_dir().is_dir() else [])})
    for path in (opts.container, *binds):
        check_name(path, "a path the container sees (--container, --bind)", SAFE_PATH)
    return binds


def submit(graph: Graph, opts: SlurmOptions, shards: list[int] | None = None) -> list[Planned]:
    """Write the scripts and submit the jobs not done; returns what was (or, dry, would be) submitted."""
    cfg = graph.cfg
    run_dir = Path(cfg.run_dir)
    record = read_jobs(run_dir)
    if not opts.dry_run:
        active = _active_jobs(record)
        if active:
            raise SubmitError(f"jobs of an earlier submission to {run_dir} are still queued or running "
                              f"({', '.join(active)}): wait for them (mapd status --run-dir {run_dir}) "
                              f"or cancel them (scancel {' '.join(active)}) before submitting again")
    planned = prepare(graph, opts, shards)
    if not planned:
        return []
    for p in planned:
        p.script.parent.mkdir(parents=True, exist_ok=True)
        Path(p.log_pattern).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p.script, lambda f, t=p.text: f.write(t.encode()))
        p.script.chmod(0o777 & ~umask())      # executable, readable as the umask allows
    if opts.dry_run:
        by_key = {p.job.key: p for p in planned}
        for p in planned:
            p.dependency = [f"<{k}>" for k in p.job.needs if k in by_key]
        return planned

    submitted: dict[str, str] = {}
    try:
        for p in planned:
            p.dependency = [submitted[k] for k in p.job.needs if k in submitted]
            args = ["sbatch", "--parsable"]
            if p.dependency:
                args.append("--dependency=afterok:" + ":".join(p.dependency))
            args.append(str(p.script))
            out = slurm_command(args).stdout.strip()
            p.job_id = out.split(";", 1)[0]
            if not p.job_id.isdigit():
                raise SubmitError(f"sbatch answered {out!r}, not a job id")
            submitted[p.job.key] = p.job_id
            log.info("submitted %s as job %s", p.job.label, p.job_id)
    except BaseException:
        if submitted:
            subprocess.run(["scancel", *submitted.values()], capture_output=True)
            log.error("cancelled the jobs already submitted: %s", ", ".join(submitted.values()))
        raise

    record.setdefault("submissions", []).append({
        "submitted": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "workdir": os.getcwd(),
        "config_sha256": file_sha256(cfg.path),
        "jobs": [{
            "key": p.job.key, "stage": p.job.stage.key, "model": p.job.model,
            "job_id": p.job_id, "shards": p.job.todo if p.job.sharded else None,
            "after": p.dependency, "script": str(p.script), "log": p.log_pattern,
        } for p in planned],
    })
    write_jobs(run_dir, record)
    return planned
