"""Submit a run's pipeline to SLURM: one sbatch script per job (stage x model), written under
``<run dir>/slurm/``, submitted as array jobs over the shards still to do and chained with
``--dependency=afterok``; the job ids are recorded in ``<run dir>/slurm/jobs.json``.

Everything is checked before the first sbatch (names, model folders, GPUs and CPUs per node,
resource formats, jobs of an earlier submission still queued); if an sbatch fails midway,
the jobs already submitted are cancelled, so a submission is whole or nothing.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from batch.shards import atomic_write
from local_teachers.engine import OFFLINE_ENV
from local_teachers.registry import cache_dir, require_local

from .jobs import SAFE_NAME, Job, array_spec, plan

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).parent / "templates" / "stage.sbatch"
# Paths written into #SBATCH lines (sbatch reads them unquoted) and names in general.
SAFE_PATH = re.compile(r"^[A-Za-z0-9._+/-]+$")
SAFE_SLURM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")            # partition, account, qos
TIME = re.compile(r"^(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+)(?::(\d+))?)?)$")
MEM = re.compile(r"^\d+[KMGT]?$")
MODEL_SLURM_KEYS = {"cpus", "mem", "time", "partition", "extra"}
STAGES = ("exam", "teach", "review", "dataset", "train", "eval")


class SubmitError(ValueError):
    """A request refused before anything was submitted."""


@dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "4:00:00"           # for jobs whose model entry sets none
    mem: str | None = None          # idem; None: the cluster's default
    cpus: int = 1                   # idem
    gpus_per_node: int | None = None   # None: read from `scontrol show node`
    signal_lead: int = 300          # seconds before the time limit to stop and requeue
    max_requeues: int = 3
    stages: tuple[str, ...] = STAGES
    array_limit: int | None = None  # at most this many tasks of one array at once
    sbatch_args: tuple[str, ...] = ()
    dry_run: bool = False


@dataclass
class Resources:
    cpus: int
    gpus: int
    time: str
    mem: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    extra: list[str] = field(default_factory=list)


@dataclass
class NodeLimits:
    gpus: int           # most GPUs on one node
    cpus: int           # most CPUs on one node
    source: str


# -- small parsers and checks ---------------------------------------------------------------

def time_seconds(text: str) -> int:
    """SLURM time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = TIME.match(str(text).strip())
    if not m:
        raise SubmitError(f"time limit {text!r} is not a SLURM time (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM:SS)")
    d, dh, dm, ds, a, b, c = (int(x) if x else None for x in m.groups())
    if d is not None:
        return d * 86400 + dh * 3600 + (dm or 0) * 60 + (ds or 0)
    if b is None:
        return a * 60
    if c is None:
        return a * 60 + b
    return a * 3600 + b * 60 + c


def _check_name(value: str, what: str, pattern=SAFE_NAME) -> str:
    if not pattern.match(value or ""):
        raise SubmitError(f"{what} {value!r} has characters outside {pattern.pattern}: "
                          "it would be unsafe in a job script; rename it")
    return value


def _check_text(value: str, what: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise SubmitError(f"{what} {value!r} holds a control character")
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cfg_to_args(cfg) -> list[str]:
    """The run options that rebuild ``cfg`` (see batch.cli.run_options), so a job runs exactly
    the configuration that was submitted. Every field maps to its option by name
    (``num_shards`` -> ``--num-shards``; booleans -> ``--x``/``--no-x``; ``*_overrides`` pairs
    -> one option each); a test checks the round trip through the real options."""
    args: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        if f.name == "teachers":
            args += ["--teachers", ",".join(value)]
        elif f.name == "feedback":
            if not value:
                args.append("--no-feedback")
        elif f.name.endswith("_overrides"):
            for key, v in value:
                if isinstance(v, bool):
                    args.append(_flag(key) if v else "--no-" + key.replace("_", "-"))
                else:
                    args += [_flag(key), repr(v) if isinstance(v, float) else str(v)]
        elif isinstance(value, bool):
            args.append(_flag(f.name) if value else "--no-" + f.name.replace("_", "-"))
        else:
            args += [_flag(f.name), str(value)]
    return args


def mapd_executable() -> str:
    """The `mapd` of this environment (the one running now), by absolute path."""
    here = Path(sys.executable).parent / "mapd"
    found = str(here) if here.is_file() else shutil.which("mapd")
    if not found:
        raise SubmitError("cannot find the `mapd` command next to this Python or on PATH; install the package")
    return str(Path(found).absolute())


# -- SLURM commands -------------------------------------------------------------------------

def slurm_command(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which(args[0]) is None:
        raise SubmitError(f"`{args[0]}` is not on PATH: run this on a SLURM login node (or install slurm-client)")
    proc = subprocess.run(args, capture_output=True, text=True)
    if check and proc.returncode != 0:
        message = proc.stderr.strip() or proc.stdout.strip()
        raise SubmitError(f"`{shlex.join(args)}` failed ({proc.returncode}): {message}")
    return proc


def _gres_gpus(gres: str) -> int:
    """'gpu:4', 'gpu:a100:4(S:0-1)', 'gpu:2,mps:100', '(null)' -> GPUs."""
    total = 0
    for item in re.split(r",(?![^(]*\))", gres):
        item = re.sub(r"\(.*?\)", "", item).strip()
        parts = item.split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def node_limits(partition: str | None) -> NodeLimits:
    """The most GPUs and CPUs one node (of ``partition``, if given) has, from `scontrol show node`."""
    out = slurm_command(["scontrol", "-o", "show", "node"]).stdout
    gpus = cpus = 0
    nodes = 0
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "NodeName" not in fields:
            continue
        if partition and partition not in fields.get("Partitions", "").split(","):
            continue
        nodes += 1
        gpus = max(gpus, _gres_gpus(fields.get("Gres", "")))
        cpus = max(cpus, int(fields.get("CPUTot", "0") or 0))
    if not nodes:
        where = f"in partition {partition!r}" if partition else "at all"
        raise SubmitError(f"`scontrol show node` lists no node {where}")
    return NodeLimits(gpus, cpus, f"scontrol show node ({nodes} node{'s' if nodes > 1 else ''}"
                                  + (f" of partition {partition}" if partition else "") + ")")


TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}


# -- jobs.json ------------------------------------------------------------------------------

def jobs_file(run_dir: Path) -> Path:
    return Path(run_dir) / "slurm" / "jobs.json"


def read_jobs(run_dir: Path) -> dict:
    path = jobs_file(run_dir)
    if not path.is_file():
        return {"submissions": []}
    return json.loads(path.read_text())


def _write_jobs(run_dir: Path, record: dict) -> None:
    text = json.dumps(record, indent=2, sort_keys=False) + "\n"
    atomic_write(jobs_file(run_dir), lambda f: f.write(text.encode()))


# -- resources and scripts ------------------------------------------------------------------

def resources(job: Job, opts: SlurmOptions) -> Resources:
    own = dict(job.spec.slurm) if job.spec else {}
    unknown = set(own) - MODEL_SLURM_KEYS
    if unknown:
        raise SubmitError(f"model {job.model!r} ({job.spec.source}): unknown slurm field(s) {sorted(unknown)}; "
                          f"allowed: {sorted(MODEL_SLURM_KEYS)}")
    extra = own.get("extra") or []
    if isinstance(extra, str):
        extra = [extra]
    res = Resources(
        cpus=int(own.get("cpus") or opts.cpus),
        gpus=int(job.spec.gpus) if job.spec else 0,
        time=str(own.get("time") or opts.time),
        mem=str(own["mem"]) if own.get("mem") else opts.mem,
        partition=opts.partition or own.get("partition"),
        account=opts.account,
        qos=opts.qos,
        extra=[*map(str, extra), *opts.sbatch_args],
    )
    where = f"model {job.model!r}" if job.spec else f"job {job.key!r}"
    if res.cpus < 1:
        raise SubmitError(f"{where}: cpus must be at least 1, got {res.cpus}")
    time_seconds(res.time)
    if res.mem is not None and not MEM.match(res.mem):
        raise SubmitError(f"{where}: memory {res.mem!r} is not a SLURM size (e.g. 64G, 16000M)")
    for value, what in ((res.partition, "partition"), (res.account, "account"), (res.qos, "qos")):
        if value is not None:
            _check_name(value, what, SAFE_SLURM_NAME)
    for arg in res.extra:
        _check_text(arg, f"{where}: extra sbatch argument")
        if not re.match(r"^--[a-z][a-z-]*(=\S+)?$", arg):
            raise SubmitError(f"{where}: extra sbatch argument {arg!r} must look like --option or --option=value "
                              "(no spaces)")
    return res


def _signal_lead(res: Resources, opts: SlurmOptions) -> int:
    # SLURM may send the signal up to a minute early; never ask for more than half the limit.
    return max(1, min(opts.signal_lead, time_seconds(res.time) // 2))


def sbatch_lines(job: Job, res: Resources, opts: SlurmOptions, log_pattern: str, workdir: str) -> list[str]:
    lines = [f"--job-name=mapd-{job.key}"]
    if job.sharded:
        lines.append(f"--array={array_spec(job.todo, opts.array_limit)}")
    lines += [f"--output={log_pattern}", f"--chdir={workdir}", "--nodes=1", "--ntasks=1",
              f"--cpus-per-task={res.cpus}", f"--time={res.time}"]
    if res.mem:
        lines.append(f"--mem={res.mem}")
    if res.gpus:
        lines.append(f"--gres=gpu:{res.gpus}")
    for flag, value in (("partition", res.partition), ("account", res.account), ("qos", res.qos)):
        if value:
            lines.append(f"--{flag}={value}")
    lines += ["--requeue", "--open-mode=append", f"--signal=B:USR1@{_signal_lead(res, opts)}", *res.extra]
    return lines


def render_script(job: Job, res: Resources, opts: SlurmOptions, *, command: list[str], log_pattern: str,
                  workdir: str, script: Path) -> str:
    exports = {**OFFLINE_ENV, "PYTHONUNBUFFERED": "1"}
    export_lines = [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    # Registry paths use ${MAPD_CACHE}: keep the submitter's unless the job's environment sets one.
    export_lines.append(f"export MAPD_CACHE=\"${{MAPD_CACHE:-{shlex.quote(str(cache_dir()))}}}\"")
    if job.sharded:
        n = len(job.todo)
        what = (f"array task i runs shard i; {n} of {job.num_shards} shard{'s' if job.num_shards > 1 else ''} "
                f"to do ({array_spec(job.todo)})")
    else:
        what = "one job (not sharded)"
    values = {
        "label": job.label or job.key,
        "what": what,
        "written": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "script": shlex.quote(str(script)),
        "sbatch": "\n".join(f"#SBATCH {line}" for line in sbatch_lines(job, res, opts, log_pattern, workdir)),
        "workdir": shlex.quote(workdir),
        "exports": "\n".join(export_lines),
        "lead": str(_signal_lead(res, opts)),
        "max_requeues": str(int(opts.max_requeues)),
        "command": shlex.join(command),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:
        raise RuntimeError(f"{TEMPLATE}: unfilled placeholders {left}")
    return text


# -- the submission -------------------------------------------------------------------------

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
    from .status import query_jobs

    ids = [j["job_id"] for s in record.get("submissions", []) for j in s["jobs"]]
    if not ids:
        return []
    active = []
    for job_id, tasks in query_jobs(ids).items():
        states = {t["state"] for t in tasks}
        if any(s not in TERMINAL for s in states):
            active.append(job_id)
    return active


def _select(jobs: list[Job], stages: tuple[str, ...]) -> list[Job]:
    unknown = set(stages) - {j.stage for j in jobs} - set(STAGES)
    if unknown:
        raise SubmitError(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    by_key = {j.key: j for j in jobs}
    chosen = [j for j in jobs if j.stage in stages]
    for job in chosen:
        if job.done:
            continue
        for need in job.needs:
            up = by_key[need]
            if up.stage not in stages and not up.done:
                left = array_spec(up.todo) if up.sharded else "all"
                raise SubmitError(f"{job.label} needs {up.label}, which is not done (shards {left}) and not "
                                  f"among the stages submitted ({','.join(stages)}): add it, or run it first")
    return chosen


def prepare(pipeline, opts: SlurmOptions, shards: list[int] | None = None) -> list[Planned]:
    """Check everything and build the scripts of the jobs to submit (nothing is written)."""
    cfg = pipeline.cfg
    workdir = os.getcwd()
    run_dir = Path(cfg.run_dir)
    abs_run = run_dir if run_dir.is_absolute() else Path(workdir) / run_dir
    _check_name(str(abs_run), "run directory", SAFE_PATH)
    _check_name(workdir, "working directory (jobs start there)", SAFE_PATH)
    for value, what in ((cfg.student, "student"), (",".join(cfg.teachers), "teachers"), (cfg.data or "", "data")):
        _check_text(value, what)
    jobs = _select(plan(pipeline, shards), tuple(opts.stages))
    for job in jobs:
        if job.spec is not None:
            _check_name(job.spec.name, "model name")
    todo = [j for j in jobs if not j.done]
    if not todo:
        return []

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
                               "", command=[mapd_executable(), job.stage, *cfg_to_args(cfg), *job.args]))

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


def submit(pipeline, opts: SlurmOptions, shards: list[int] | None = None) -> list[Planned]:
    """Write the scripts and submit the jobs not done; returns what was (or, dry, would be) submitted."""
    cfg = pipeline.cfg
    run_dir = Path(cfg.run_dir)
    record = read_jobs(run_dir)
    if not opts.dry_run:
        active = _active_jobs(record)
        if active:
            raise SubmitError(f"jobs of an earlier submission to {run_dir} are still queued or running "
                              f"({', '.join(active)}): wait for them (mapd status --run-dir {run_dir}) "
                              f"or cancel them (scancel {' '.join(active)}) before submitting again")
    planned = prepare(pipeline, opts, shards)
    if not planned:
        return []
    for p in planned:
        p.script.parent.mkdir(parents=True, exist_ok=True)
        Path(p.log_pattern).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p.script, lambda f, t=p.text: f.write(t.encode()))
        p.script.chmod(0o755)
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
        "config": cfg.to_dict(),
        "jobs": [{
            "key": p.job.key, "stage": p.job.stage, "model": p.job.model, "label": p.job.label,
            "job_id": p.job_id, "shards": p.job.todo if p.job.sharded else None,
            "num_shards": p.job.num_shards, "after": p.dependency, "script": str(p.script),
            "log": p.log_pattern, "resources": vars(p.resources),
        } for p in planned],
    })
    _write_jobs(run_dir, record)
    return planned
