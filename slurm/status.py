"""Where a run submitted to SLURM stands: per job (stage x model), the shards done (read from
the shard manifests, the only truth about outputs) and the state of the latest SLURM task of
each shard (read with `scontrol show job`), with the log of every failure and the dependents
SLURM cancelled."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from mapd.batch.config import RunConfig
from mapd.batch.graph import Graph
from mapd.batch.shards import file_sha256

from .cluster import CATEGORIES, category, query_jobs
from .jobs import jobs_file, read_jobs, run_jobs

def _log_path(pattern: str, job_id: str, shard: int | None) -> str:
    if shard is None:
        return pattern.replace("%j", job_id)
    return pattern.replace("%A", job_id).replace("%a", str(shard))


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

    out = {"run_dir": str(run_dir), "jobs_file": str(jobs_file(run_dir)), "submissions": len(record["submissions"]),
           "last_submitted": current[-1]["submitted"] if current else None, "jobs": []}
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
            record_ = next((t for t in found.get(job_id, [])
                            if shard is None or (t["shards"] is not None and shard in t["shards"])), None)
            state = record_["state"] if record_ else "UNKNOWN"
            reason = record_["reason"] if record_ else "no longer known to slurmctld"
            task = {
                "shard": shard, "job": job_id if shard is None else f"{job_id}_{shard}", "state": state,
                "category": category(state), "reason": reason,
                "exit_code": record_["exit_code"] if record_ else "", "restarts": record_["restarts"] if record_ else 0,
                "log": _log_path(entry["log"], job_id, shard),
                "output_done": job.done or (shard is not None and shard not in job.todo),
                "dependency_failed": bool(record_) and state == "CANCELLED" and reason == "DependencyNeverSatisfied",
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


def format_status(status: dict) -> str:
    if status["last_submitted"]:
        lines = [(f"run {status['run_dir']}: {status['submissions']} submission(s) to SLURM, the last at "
                  f"{status['last_submitted']} (job ids in {status['jobs_file']})")]
    else:
        lines = [f"run {status['run_dir']}: no SLURM job of this configuration; what is done, from its outputs:"]
    if status.get("note"):
        lines.append(f"note: {status['note']}")
    width = max(len(j["label"]) for j in status["jobs"]) + 2
    for job in status["jobs"]:
        progress = (f"shards {job['shards_done']}/{job['shards_total']} done" if job["sharded"]
                    else "done" if job["done"] else "not done")
        counts = ", ".join(f"{n} {c}" for c in CATEGORIES if (n := job["counts"].get(c)))
        lines.append(f"{job['label']:<{width}}{progress:<20}jobs: {counts or 'none submitted'}")
        for t in job["tasks"]:
            what = "" if t["shard"] is None else f"shard {t['shard']} "
            if t["category"] == "failed":
                lines.append(f"    {what}{t['state']} (job {t['job']}, exit {t['exit_code']}, {t['reason']}): "
                             f"log {t['log']}")
            elif t["category"] == "cancelled":
                why = ("dependency never satisfied: a job it needs failed, so SLURM cancelled it"
                       if t["dependency_failed"] else f"cancelled ({t['reason']})")
                lines.append(f"    {what}CANCELLED (job {t['job']}): {why}")
            elif t["category"] == "unknown" and not t["output_done"]:
                lines.append(f"    {what}job {t['job']} is no longer known to SLURM and its output is not done")
            elif t["category"] == "pending" and t["reason"] not in ("None", ""):
                lines.append(f"    {what}pending (job {t['job']}: {t['reason']})")
    c = status["counts"]
    if status["done"]:
        lines.append("all stages done")
    elif not status["last_submitted"]:
        lines.append(f"not done: `mapd distill --run-dir {status['run_dir']}` runs the rest here, "
                     f"`mapd submit --run-dir {status['run_dir']}` on SLURM")
    elif status["active"]:
        lines.append(f"in progress: {c['running']} running, {c['pending']} pending")
    else:
        lines.append(f"stopped: {c['failed']} failed, {status['dependents_cancelled']} dependent(s) cancelled, "
                     f"{c['cancelled'] - status['dependents_cancelled']} cancelled otherwise. Fix the cause (see the "
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

