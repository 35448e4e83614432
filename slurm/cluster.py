"""Talking to SLURM: its commands, what its nodes offer, and the state of jobs."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass

from .jobs import parse_array


class SubmitError(ValueError):
    """A request refused before anything was submitted, or a SLURM command that failed."""


@dataclass
class NodeLimits:
    gpus: int           # most GPUs on one node
    cpus: int           # most CPUs on one node
    source: str


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


RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}
FAILED = {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
CATEGORIES = ("pending", "running", "completed", "failed", "cancelled", "unknown")


def category(state: str) -> str:
    if state == "UNKNOWN":
        return "unknown"
    if state in RUNNING:
        return "running"
    if state == "COMPLETED":
        return "completed"
    if state in FAILED:
        return "failed"
    if state == "CANCELLED":
        return "cancelled"
    return "pending"        # PENDING, REQUEUED, held, suspended, ...


def query_jobs(job_ids) -> dict[str, list[dict]]:
    """``{job id: [task records]}`` from `scontrol -o show job`; a job SLURM no longer knows
    (purged after MinJobAge) has no records."""
    out: dict[str, list[dict]] = {}
    for job_id in dict.fromkeys(map(str, job_ids)):
        proc = slurm_command(["scontrol", "-o", "show", "job", job_id], check=False)
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr:
                out[job_id] = []
                continue
            raise SubmitError(f"`scontrol show job {job_id}` failed: {proc.stderr.strip()}")
        tasks = []
        for line in proc.stdout.splitlines():
            fields = dict(re.findall(r"(?:^|\s)([A-Za-z/]+)=(\S*)", line))
            if "JobId" not in fields:
                continue
            task_ids = fields.get("ArrayTaskId")
            tasks.append({
                "job_id": fields["JobId"],
                "array_job_id": fields.get("ArrayJobId"),
                "shards": parse_array(task_ids) if task_ids else None,
                "state": fields.get("JobState", "UNKNOWN"),
                "reason": fields.get("Reason", ""),
                "exit_code": fields.get("ExitCode", ""),
                "restarts": int(fields.get("Restarts", "0") or 0),
                "stdout": fields.get("StdOut", ""),
                "source": "slurmctld",
            })
        out[job_id] = tasks
    return out


SACCT_FORMAT = "JobID,State,ExitCode,Reason"


def parse_sacct(text: str) -> dict[str, list[dict]]:
    """``sacct -P -n -X --format=JobID,State,ExitCode,Reason`` -> ``{job id: [task records]}`` as
    ``query_jobs`` gives them. An array task reads JOBID_TASK, tasks that never started
    JOBID_[0-2]; a job a user cancelled "CANCELLED by UID" (reason "by uid UID"), one SLURM
    cancelled plain CANCELLED. sacct keeps no restart count (None)."""
    out: dict[str, list[dict]] = {}
    for line in filter(None, text.splitlines()):
        job, state, exit_code, reason = line.split("|")[:4]
        job_id, _, tasks = job.partition("_")
        state, _, by = state.partition(" by ")
        out.setdefault(job_id, []).append({
            "job_id": job,
            "array_job_id": job_id if tasks else None,
            "shards": parse_array(tasks.strip("[]")) if tasks else None,
            "state": state,
            "reason": f"by uid {by}" if by else "" if reason == "None" else reason,
            "exit_code": exit_code,
            "restarts": None,
            "source": "sacct",
        })
    return out


def query_accounting(job_ids) -> tuple[dict[str, list[dict]], str | None]:
    """Jobs slurmctld has forgotten (it drops a job MinJobAge after it ended), from the accounting
    database: ``parse_sacct``'s records, and why sacct could not answer (accounting disabled,
    slurmdbd down, no sacct) or None. A job it never heard of has no records."""
    args = ["sacct", "-j", ",".join(dict.fromkeys(map(str, job_ids))), "-P", "-n", "-X", f"--format={SACCT_FORMAT}"]
    try:
        proc = slurm_command(args, check=False)
    except SubmitError as e:
        return {}, str(e)
    if proc.returncode != 0:
        # The last line says why ("Slurm accounting storage is disabled", "Problem talking to the database: ...").
        lines = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()
        return {}, f"`sacct` failed: {lines[-1].removeprefix('sacct: error: ')}"
    return parse_sacct(proc.stdout), None
