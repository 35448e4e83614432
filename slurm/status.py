"""Where a run submitted to SLURM stands: per job (stage x model), the shards done (read from
the shard manifests, the only truth about outputs) and the state of the latest SLURM task of
each shard (read with `scontrol show job`), with the log of every failure and the dependents
SLURM cancelled."""
from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from pathlib import Path

from batch.config import RunConfig

from .jobs import parse_array, plan
from .submit import SubmitError, jobs_file, read_jobs, slurm_command

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
            })
        out[job_id] = tasks
    return out


def config_of(submission: dict) -> RunConfig:
    """The RunConfig a submission recorded (``RunConfig.to_dict`` form), its run directory
    made absolute from the directory the jobs run in."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    d = {k: v for k, v in submission["config"].items() if k in known}
    run_dir = Path(d["run_dir"])
    if not run_dir.is_absolute():
        run_dir = Path(submission["workdir"]) / run_dir
    d.update(run_dir=run_dir, teachers=tuple(d["teachers"]))
    for key, value in d.items():
        if key.endswith("_overrides") and isinstance(value, dict):
            d[key] = tuple(value.items())
    return RunConfig(**d)


def _log_path(pattern: str, job_id: str, shard: int | None) -> str:
    if shard is None:
        return pattern.replace("%j", job_id)
    return pattern.replace("%A", job_id).replace("%a", str(shard))


def run_status(run_dir: Path) -> dict:
    """The status of every job of the run's latest submitted configuration, as a dict."""
    from batch.pipeline import Pipeline

    record = read_jobs(run_dir)
    if not record.get("submissions"):
        raise SubmitError(f"nothing was submitted to SLURM for {run_dir} (no {jobs_file(run_dir)})")
    last = record["submissions"][-1]
    old = [s for s in record["submissions"] if s["config"] != last["config"]]
    cfg = config_of(last)
    jobs = plan(Pipeline(cfg))

    # The latest SLURM job of each (job, shard), over every submission of this configuration.
    latest: dict[tuple[str, int | None], dict] = {}
    for submission in record["submissions"]:
        if submission["config"] != last["config"]:
            continue
        for entry in submission["jobs"]:
            for shard in (entry["shards"] if entry["shards"] is not None else [None]):
                latest[(entry["key"], shard)] = entry
    found = query_jobs({e["job_id"] for e in latest.values()})

    out = {"run_dir": str(run_dir), "jobs_file": str(jobs_file(run_dir)), "submissions": len(record["submissions"]),
           "last_submitted": last["submitted"], "jobs": []}
    if old:
        out["note"] = f"{len(old)} earlier submission(s) of another configuration are not shown"
    for job in jobs:
        shards = list(range(job.num_shards)) if job.sharded else [None]
        item = {"key": job.key, "label": job.label, "stage": job.stage, "model": job.model, "sharded": job.sharded,
                "shards_total": job.num_shards if job.sharded else 1,
                "shards_done": (job.num_shards - len(job.todo)) if job.sharded else int(job.done),
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
    lines = [(f"run {status['run_dir']}: {status['submissions']} submission(s) to SLURM, the last at "
              f"{status['last_submitted']} (job ids in {status['jobs_file']})")]
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

