"""What a job asks SLURM for: the submitter's options, a model entry's ``slurm:`` fields over
them, and the checks that refuse a bad request before anything is submitted."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .cluster import SubmitError
from .jobs import SAFE_NAME, Job

# Paths written into #SBATCH lines (sbatch reads them unquoted) and names in general.
SAFE_PATH = re.compile(r"^[A-Za-z0-9._+/-]+$")
SAFE_SLURM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")            # partition, account, qos
TIME = re.compile(r"^(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+)(?::(\d+))?)?)$")
MEM = re.compile(r"^\d+[KMGT]?$")
MODEL_SLURM_KEYS = {"cpus", "mem", "time", "partition", "extra", "setup"}


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
    stages: tuple[str, ...] | None = None   # None: every kind of stage
    array_limit: int | None = None  # at most this many tasks of one array at once
    sbatch_args: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()     # shell lines each job runs before the stage (module load ..., source ...)
    container: str | None = None    # an Apptainer image the stage runs in
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
    setup: list[str] = field(default_factory=list)


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


def check_name(value: str, what: str, pattern=SAFE_NAME) -> str:
    if not pattern.match(value or ""):
        raise SubmitError(f"{what} {value!r} has characters outside {pattern.pattern}: "
                          "it would be unsafe in a job script; rename it")
    return value


def check_text(value: str, what: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise SubmitError(f"{what} {value!r} holds a control character")
    return value


def resources(job: Job, opts: SlurmOptions) -> Resources:
    own = dict(job.spec.slurm) if job.spec else {}
    unknown = set(own) - MODEL_SLURM_KEYS
    if unknown:
        raise SubmitError(f"model {job.model!r} ({job.spec.source}): unknown slurm field(s) {sorted(unknown)}; "
                          f"allowed: {sorted(MODEL_SLURM_KEYS)}")
    extra, setup = (_lines(own.get(key)) for key in ("extra", "setup"))
    res = Resources(
        cpus=int(own.get("cpus") or opts.cpus),
        gpus=int(job.spec.gpus) if job.spec else 0,
        time=str(own.get("time") or opts.time),
        mem=str(own["mem"]) if own.get("mem") else opts.mem,
        partition=opts.partition or own.get("partition"),
        account=opts.account,
        qos=opts.qos,
        extra=[*extra, *opts.sbatch_args],
        # The submitter's lines first (site-wide: modules, environments), then the model's own.
        setup=[*opts.setup, *setup],
    )
    where = f"model {job.model!r}" if job.spec else f"job {job.key!r}"
    if res.cpus < 1:
        raise SubmitError(f"{where}: cpus must be at least 1, got {res.cpus}")
    time_seconds(res.time)
    if res.mem is not None and not MEM.match(res.mem):
        raise SubmitError(f"{where}: memory {res.mem!r} is not a SLURM size (e.g. 64G, 16000M)")
    for value, what in ((res.partition, "partition"), (res.account, "account"), (res.qos, "qos")):
        if value is not None:
            check_name(value, what, SAFE_SLURM_NAME)
    for arg in res.extra:
        check_text(arg, f"{where}: extra sbatch argument")
        if not re.match(r"^--[a-z][a-z-]*(=\S+)?$", arg):
            raise SubmitError(f"{where}: extra sbatch argument {arg!r} must look like --option or --option=value "
                              "(no spaces)")
    for line in res.setup:
        if "\n" in line or "\r" in line:
            raise SubmitError(f"{where}: setup line {line!r} holds a line break: give each line as its own "
                              "--setup (or list item of slurm: setup)")
        check_text(line, f"{where}: setup line")
    return res


def _lines(value) -> list[str]:
    """A model entry's list field, also given as one string."""
    if value is None:
        return []
    return [str(v) for v in ([value] if isinstance(value, str) else value)]


def signal_lead(res: Resources, opts: SlurmOptions) -> int:
    # SLURM may send the signal up to a minute early; never ask for more than half the limit.
    return max(1, min(opts.signal_lead, time_seconds(res.time) // 2))
