"""CPU jobs sharing a SLURM node: the tokens/s two exam jobs reach together against one job
alone, on the real local cluster (tests/slurm_cluster.py: one node with this machine's CPUs, no
cgroups, TaskPlugin=task/none) with the real student (SmolLM2-135M on vLLM).

    .venv/bin/python bench/cpu_jobs.py [--questions 4] [--max-tokens 48]   (root, SLURM installed)

Cases, one after the other on the same cluster, each job asking for its CPUs with --cpus:
- alone, 1 CPU: one exam job of Q questions;
- alone, all CPUs: one exam job of Q questions with every CPU of the node;
- two at once, 1 CPU each: an exam of 2Q questions in 2 shards, the two array tasks at once;
- two at once, unbound: the same with the job script's CPU binding undone (a setup line that
  says the job has every CPU of the node), which is how every job ran before it: each job's
  threads on every core.
A job's tokens/s is its completion tokens over its engine seconds, from its shard manifest
(model loading excluded); two jobs at once together reach the sum of theirs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from slurm_cluster import LocalCluster, why_cannot_start  # noqa: E402

from mapd.batch.config import RunConfig  # noqa: E402
from mapd.batch.graph import Graph  # noqa: E402
from mapd.batch.shards import read_manifest  # noqa: E402
from mapd.local_teachers.registry import load_spec  # noqa: E402

MAPD = str(Path(sys.executable).parent / "mapd")


def run_case(env: dict, folder: Path, student: str, questions: int, shards: int, cpus: int,
             setup: tuple[str, ...] = ()) -> list[float]:
    """Submit an exam of ``questions`` in ``shards`` tasks and wait; each task's tokens/s."""
    run = folder / f"run-{shards}x{cpus}{'-unbound' if setup else ''}"
    args = [MAPD, "submit", "--task", "gsm8k", "--run-dir", str(run), "--student", student, "--teachers", student,
            "--limit", str(questions), "--num-shards", str(shards), "--stages", "exam", "--cpus", str(cpus)]
    for line in setup:
        args += ["--setup", line]
    subprocess.run(args, env=env, check=True, capture_output=True, text=True)
    subprocess.run([MAPD, "status", "--run-dir", str(run), "--wait", "--interval", "1"], env=env,
                   capture_output=True, text=True, timeout=3600)
    exam = Graph(RunConfig.load(run)).one("exam")
    rates = []
    for shard in range(shards):
        manifest = read_manifest(exam.path(shard))
        if manifest is None:
            logs = "\n".join(p.read_text()[-2000:] for p in (run / "logs").glob("exam-*.log"))
            raise SystemExit(f"{run}: exam shard {shard} was not written; logs:\n{logs}")
        f = manifest["figures"]
        rates.append(f["completion_tokens"] / f["engine_seconds"])
    return rates


@click.command()
@click.option("--questions", type=int, default=4, show_default=True, help="questions per job")
@click.option("--max-tokens", type=int, default=48, show_default=True, help="new tokens per answer")
def main(questions: int, max_tokens: int):
    why = why_cannot_start()
    if why:
        raise SystemExit(why)
    cpus = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="mapd-bench-cpu-jobs-") as tmp:
        tmp = Path(tmp)
        spec = yaml.safe_load(Path(load_spec("smollm2-135m-instruct").source).read_text())
        spec["sampling"]["max_tokens"] = max_tokens
        student = tmp / "student.yaml"
        student.write_text(yaml.safe_dump(spec))
        with LocalCluster(tmp / "cluster", cpus=cpus, gpus=0) as cluster:
            env = {**cluster.env}
            env.pop("OMP_NUM_THREADS", None)
            env.pop("MAPD_THREADS", None)
            t0 = time.perf_counter()
            alone = run_case(env, tmp, str(student), questions, 1, 1)[0]
            whole = run_case(env, tmp, str(student), questions, 1, cpus)[0]
            two = run_case(env, tmp, str(student), 2 * questions, 2, 1)
            unbound = run_case(env, tmp, str(student), 2 * questions, 2, 1,
                               setup=(f"export SLURM_CPUS_ON_NODE={cpus}",))
            wall = time.perf_counter() - t0
    print(f"CPU exam jobs on one {cpus}-CPU SLURM node (no cgroups), {questions} questions x {max_tokens} tokens "
          f"per job, {wall:.0f} s in all")
    print(f"  alone, 1 CPU                  {alone:7.1f} tok/s")
    print(f"  alone, {cpus} CPUs                 {whole:7.1f} tok/s")
    print(f"  two at once, 1 CPU each       {' + '.join(f'{r:.1f}' for r in two)} = {sum(two):7.1f} tok/s   "
          f"{sum(two) / alone:.2f}x alone on 1 CPU, {sum(two) / whole:.2f}x alone on {cpus}")
    print(f"  two at once, unbound (before) {' + '.join(f'{r:.1f}' for r in unbound)} = {sum(unbound):7.1f} tok/s   "
          f"{sum(unbound) / alone:.2f}x alone on 1 CPU, {sum(unbound) / whole:.2f}x alone on {cpus}")


if __name__ == "__main__":
    main()
