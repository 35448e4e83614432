"""Where a run stands: per job (stage x model), the shards done (read from the shard manifests,
the only truth about outputs) and, for a run submitted to SLURM, the state of the latest SLURM
task of each shard: from `scontrol show job`, else (slurmctld forgets a job MinJobAge after it
ended) from the accounting database with `sacct`, else unknown. Every task shown names its log."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from mapd.batch.config import RunConfig
from mapd.batch.graph import Graph
from mapd.batch.shards import file_sha256

from .cluster import CATEGORIES, category, query_accounting, query_jobs
from .jobs import array_spec, jobs_file, read_jobs, run_jobs

def _log_path(pattern: str, job_id: str, shard: int | None) -> str:
    if shard is None:
        return pattern.replace("%j", job_id)
    return pattern.replace("%A", job_id).replace("%a", str(shard))


def _record(records: list[dict], shard: int | None) -> dict | None:
    """The record of ``shard`` among a job's task records (the first for a job that is no array)."""
    return next((t for t in records if shard is None or (t["shards"] is not None and shard in t["shards"])), None)


def _dependency_failed(record: dict, after: list[str]) -> bool:
    """Whether SLURM cancelled the task because a job it waited for failed (kill_invalid_depend).
    sacct keeps no DependencyNeverSatisfied: there, a task cancelled by SLURM itself (no "by
    uid") that waited for other jobs."""
    if record["state"] != "CANCELLED":
        return False
    if record["source"] == "sacct":
        return not record["reason"].startswith("by uid") and bool(after)
    return record["reason"] == "DependencyNeverSatisfied"


def run_status(run_dir: Path) -> dict:
    """Every stage of the run with its shards done (from config.yaml and the manifests) and the
    state of the latest SLURM job of each shard submitted with this configuration."""
    cfg = RunConfig.load(run_dir)
    jobs = run_jobs(Graph(cfg))
    record = read_jobs(run_dir)
    config_sha = file_sha256(cfg.path)
    current = [s for s in record["submissions"] if s.get("config_sha256") == config_sha]
    # The latest SLURM job of each (job, shard), over every submission of this configuration.
    latest: dict[tuple[str, int | None], dict] = {}
    for submission in current:
        for entry in submission["jobs"]:
            for shard in (entry["shards"] if entry["shards"] is not None else [None]):
                latest[(entry["key"], shard)] = entry
    found = query_jobs({e["job_id"] for e in latest.values()}) if latest else {}
    # slurmctld drops a job MinJobAge after it ended: only for those ask the accounting database.
    forgotten = {e["job_id"] for (_, shard), e in latest.items() if not _record(found.get(e["job_id"], []), shard)}
    accounted, accounting_error = query_accounting(forgotten) if forgotten else ({}, None)

    out = {"run_dir": str(run_dir), "jobs_file": str(jobs_file(run_dir)), "submissions": len(record["submissions"]),
           "last_submitted": current[-1]["submitted"] if current else None, "accounting_error": accounting_error,
           "jobs": []}
    if len(current) < len(record["submissions"]):
        out["note"] = (f"{len(record['submissions']) - len(current)} earlier submission(s) of another "
                       "configuration are not shown")
    for job in jobs:
        shards = list(range(job.num_shards)) if job.sharded else [None]
        item = {"key": job.key, "label": job.label, "stage": job.stage.name, "model": job.model,
                "sharded": job.sharded, "shards_total": job.num_shards, "shards_done": job.num_shards - len(job.todo),
                "done": job.done, "tasks": []}
        for shard in shards:
            entry = latest.get((job.key, shard))
            if entry is None:
                continue
            job_id = entry["job_id"]
            # slurmctld's record first: it is the newer one while the job is known there.
            record_ = _record(found.get(job_id, []) + accounted.get(job_id, []), shard)
            state = record_["state"] if record_ else "UNKNOWN"
            log = _log_path(entry["log"], job_id, shard)
            task = {
                "shard": shard, "job_id": job_id, "job": job_id if shard is None else f"{job_id}_{shard}",
                "state": state,
                "category": category(state), "source": record_["source"] if record_ else None,
                "reason": record_["reason"] if record_ else "neither slurmctld nor the accounting database knows it",
                "exit_code": record_["exit_code"] if record_ else "",
                "restarts": record_["restarts"] if record_ else None,
                "log": log, "log_exists": Path(log).exists(),
                "output_done": job.done or (shard is not None and shard not in job.todo),
                "dependency_failed": bool(record_) and _dependency_failed(record_, entry["after"]),
            }
            item["tasks"].append(task)
        item["counts"] = dict(Counter(t["category"] for t in item["tasks"]))
        out["jobs"].append(item)

    tally = Counter(t["category"] for j in out["jobs"] for t in j["tasks"])
    out["counts"] = {c: tally.get(c, 0) for c in CATEGORIES}
    out["dependents_cancelled"] = sum(t["dependency_failed"] for j in out["jobs"] for t in j["tasks"])
    out["active"] = out["counts"]["pending"] + out["counts"]["running"]
    out["done"] = all(j["done"] for j in out["jobs"])
    return out


def _task_lines(tasks: list[dict]) -> list[str]:
    """A line for each task worth a look, with its log: none for a completed task, a pending one
    waiting for nothing in particular, or a forgotten one whose output is done. Tasks of one job
    that read the same and have no log (an array SLURM cancelled, or one waiting for a dependency)
    share a line, so a failure upstream does not print one line per shard downstream."""
    groups: dict[tuple, list[int | None]] = {}
    for t in tasks:
        kind = t["category"]
        reason = "" if t["reason"] == "None" else t["reason"]
        if kind == "completed" or (kind == "unknown" and t["output_done"]) or (kind == "pending" and not reason):
            continue
        details = []
        if kind == "failed":
            details.append(f"exit {t['exit_code']}")
        if kind in ("failed", "pending") and reason:
            details.append(reason)
        if t["restarts"]:
            details.append(f"{t['restarts']} restart(s)")
        if t["source"] == "sacct":
            details.append("from sacct")
        why = ""
        if t["dependency_failed"]:
            why = "dependency never satisfied: a job it needs failed, so SLURM cancelled it"
        elif kind == "cancelled":
            why = f"cancelled {reason}".strip()
        elif kind == "unknown":
            why = f"{reason}, and its output is not done"
        log = f"log {t['log']}" if t["log_exists"] else "no log"
        groups.setdefault((t["state"], t["job_id"], tuple(details), why, log), []).append(t["shard"])
    lines = []
    for (state, job_id, details, why, log), shards in groups.items():
        if shards == [None]:
            what, job = "", job_id
        elif len(shards) == 1:
            what, job = f"shard {shards[0]} ", f"{job_id}_{shards[0]}"
        else:
            what, job = f"shards {array_spec(shards)} ", f"{job_id}_[{array_spec(shards)}]"
        lines.append(f"    {what}{state} ({', '.join([f'job {job}', *details])}): "
                     + "; ".join(filter(None, [why, log])))
    return lines


def format_status(status: dict) -> str:
    submitted = bool(status["last_submitted"])
    if submitted:
        lines = [(f"run {status['run_dir']}: {status['submissions']} submission(s) to SLURM, the last at "
                  f"{status['last_submitted']} (job ids in {status['jobs_file']})")]
    else:
        lines = [f"run {status['run_dir']}: no SLURM job of this configuration; what is done, from its outputs:"]
    if status.get("note"):
        lines.append(f"note: {status['note']}")
    if status["accounting_error"]:
        lines.append(f"note: slurmctld has forgotten some jobs and {status['accounting_error']}")
    width = max(len(j["label"]) for j in status["jobs"]) + 2
    for job in status["jobs"]:
        progress = (f"shards {job['shards_done']}/{job['shards_total']} done" if job["sharded"]
                    else "done" if job["done"] else "not done")
        counts = ", ".join(f"{n} {c}" for c in CATEGORIES if (n := job["counts"].get(c)))
        lines.append(f"{job['label']:<{width}}{progress:<20}jobs: {counts or 'none submitted'}" if submitted
                     else f"{job['label']:<{width}}{progress}")
        lines.extend(_task_lines(job["tasks"]))
    c = status["counts"]
    if status["done"]:
        lines.append("all stages done")
    elif not submitted:
        lines.append(f"not done: `mapd distill --run-dir {status['run_dir']}` runs the rest here, "
                     f"`mapd submit --run-dir {status['run_dir']}` on SLURM")
    elif status["active"]:
        lines.append(f"in progress: {c['running']} running, {c['pending']} pending")
    else:
        lines.append(f"stopped: {c['failed']} failed, {status['dependents_cancelled']} dependent(s) cancelled, "
                     f"{c['cancelled'] - status['dependents_cancelled']} cancelled otherwise"
                     + (f", {c['unknown']} unknown" if c["unknown"] else "") + ". Fix the cause (see the "
                     "logs) and submit again with the same options: only the shards not done are submitted")
    return "\n".join(lines)


def wait_for(run_dir: Path, interval: float = 5.0, timeout: float | None = None) -> dict:
    """Poll until no job of the run is pending or running; returns the last status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = run_status(run_dir)
        if not status["active"]:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"jobs of {run_dir} still active after {timeout:.0f} s")
        time.sleep(interval)

