"""`mapd status` that never forgets: a run with no SLURM job reads its manifests; a job slurmctld
has dropped (MinJobAge after it ended) is read from the accounting database with sacct, on a
real cluster with slurmdbd and MariaDB (tests/slurm_cluster.py, accounting=True); a job neither
knows is said to be unknown, with accounting or without."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mapd.batch.config import RunConfig
from mapd.batch.graph import Graph
from mapd.batch.shards import file_sha256
from mapd.slurm.cluster import parse_sacct
from mapd.slurm.jobs import write_jobs
from mapd.slurm.status import format_status
from slurm_cluster import LocalCluster, why_cannot_start, why_no_accounting
from test_slurm import ROOT, _run_args, _slurm_cli, _wait


def _status(run, env=None) -> tuple[str, dict]:
    """`mapd status`'s text and JSON: in this process without ``env``, else as a command."""
    if env is None:
        from mapd.cli import main

        texts = [CliRunner().invoke(main, ["status", "--run-dir", str(run), *flag]) for flag in ([], ["--json"])]
        assert all(t.exit_code == 0 for t in texts), texts[0].output
        return texts[0].output, json.loads(texts[1].output)
    return (_slurm_cli(env, "status", "--run-dir", str(run)).stdout,
            json.loads(_slurm_cli(env, "status", "--run-dir", str(run), "--json").stdout))


def _saved_run(run, tiny_spec_file) -> RunConfig:
    cfg = RunConfig(task="svamp", run_dir=run, student=str(tiny_spec_file), teachers=(str(tiny_spec_file),),
                    limit=4, num_shards=2)
    cfg.save()
    return cfg


# -- without a cluster ------------------------------------------------------------------------

def test_sacct_lines_are_read_per_array_task():
    # What sacct 22.05 (-P -n -X --format=JobID,State,ExitCode,Reason) printed on the test cluster:
    # array 1 failed (exit 3), job 3 completed, array 2 cancelled by SLURM for its dependency on 1
    # before any task started, array 4 cancelled by root while task 0 ran and 1-3 waited (%1).
    text = ("3|COMPLETED|0:0|None\n1_0|FAILED|3:0|None\n1_1|FAILED|3:0|None\n2_[0-2]|CANCELLED|0:0|None\n"
            "4_0|CANCELLED by 0|0:0|None\n4_[1-3%1]|CANCELLED by 0|0:0|None\n")
    jobs = parse_sacct(text)
    assert set(jobs) == {"1", "2", "3", "4"}
    (job,) = jobs["3"]
    assert (job["shards"], job["state"], job["exit_code"], job["reason"], job["source"]) == \
        (None, "COMPLETED", "0:0", "", "sacct")
    assert [(t["job_id"], t["shards"], t["state"], t["exit_code"]) for t in jobs["1"]] == \
        [("1_0", [0], "FAILED", "3:0"), ("1_1", [1], "FAILED", "3:0")]
    assert [(t["shards"], t["state"], t["reason"]) for t in jobs["2"]] == [([0, 1, 2], "CANCELLED", "")]
    assert [(t["shards"], t["state"], t["reason"]) for t in jobs["4"]] == \
        [([0], "CANCELLED", "by uid 0"), ([1, 2, 3], "CANCELLED", "by uid 0")]


def test_a_run_without_slurm_jobs_shows_the_shards_done_from_its_manifests(tmp_path, tiny_spec_file, monkeypatch):
    run = tmp_path / "run"
    Graph(_saved_run(run, tiny_spec_file))["exam"].run([0])
    monkeypatch.setenv("PATH", str(tmp_path))       # no scontrol, no sacct: none is needed
    text, status = _status(run)
    lines = text.splitlines()
    assert lines[0] == f"run {run}: no SLURM job of this configuration; what is done, from its outputs:"
    assert lines[1].split() == ["exam", "shards", "1/2", "done"]
    assert lines[2].split() == ["teach/tiny-llama", "shards", "0/2", "done"]
    assert "dataset" in lines[3] and lines[3].endswith("not done") and "jobs:" not in text
    assert lines[-1].startswith(f"not done: `mapd distill --run-dir {run}` runs the rest here")
    assert not status["done"] and all(not j["tasks"] for j in status["jobs"])


# -- on real local clusters, with and without accounting --------------------------------------

@pytest.fixture(scope="module")
def accounting_cluster(tmp_path_factory):
    why = why_cannot_start() or why_no_accounting()
    if why:
        pytest.skip(why)
    with LocalCluster(tmp_path_factory.mktemp("slurm-accounting"), gpus=0, accounting=True) as c:
        yield c


def _env(cluster) -> dict[str, str]:
    return {**cluster.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


@pytest.mark.slurm
@pytest.mark.root
def test_a_job_whose_record_scontrol_has_dropped_is_still_reported_from_sacct(accounting_cluster, tmp_path,
                                                                              tiny_spec_file):
    env = _env(accounting_cluster)
    run = tmp_path / "run"
    # Shard 1 of the exam cannot be written (a folder stands where its file goes): it fails, and
    # SLURM cancels the teacher's array, which waits for the exam.
    (run / "exam" / "shard-00001-of-00002.parquet" / "in-the-way").mkdir(parents=True)
    _slurm_cli(env, "submit", *_run_args(run, str(tiny_spec_file), [str(tiny_spec_file)]), "--stages", "exam,teach")
    # While a task runs (it takes seconds to start Python and load the model), its line names its log.
    deadline = time.monotonic() + 60
    while True:
        status = json.loads(_slurm_cli(env, "status", "--run-dir", str(run), "--json").stdout)
        if running := [t for t in status["jobs"][0]["tasks"] if t["category"] == "running"]:
            break
        assert time.monotonic() < deadline, "no exam task ran within 60 s"
        time.sleep(0.5)
    task = running[0]
    assert f"shard {task['shard']} RUNNING (job {task['job']}): log {task['log']}" in format_status(status)
    _wait(env, run)
    ids = [j["job_id"] for j in json.loads((run / "slurm" / "jobs.json").read_text())["submissions"][0]["jobs"]]
    # slurmctld drops a job MinJobAge (2 s) after it ended, at its next purge (every 10 s).
    deadline = time.monotonic() + 90
    while any(subprocess.run(["scontrol", "show", "job", i], env=env, capture_output=True).returncode == 0
              for i in ids):
        assert time.monotonic() < deadline, "slurmctld still knows the jobs after 90 s"
        time.sleep(1)

    text, status = _status(run, env)
    jobs = {j["key"]: j for j in status["jobs"]}
    exam = {t["shard"]: t for t in jobs["exam"]["tasks"]}
    assert {(t["state"], t["exit_code"], t["source"]) for t in exam.values()} == \
        {("COMPLETED", "0:0", "sacct"), ("FAILED", "1:0", "sacct")}
    failed = exam[1]
    assert failed["state"] == "FAILED" and "Is a directory; could not write" in Path(failed["log"]).read_text()
    assert jobs["exam"]["shards_done"] == 1 and jobs["exam"]["counts"] == {"completed": 1, "failed": 1}
    teach = jobs["teach-tiny-llama"]["tasks"]
    assert [(t["state"], t["dependency_failed"], t["log_exists"]) for t in teach] == [("CANCELLED", True, False)] * 2
    assert status["accounting_error"] is None and status["dependents_cancelled"] == 2
    assert f"shard 1 FAILED (job {failed['job']}, exit 1:0, from sacct): log {failed['log']}" in text
    # The two cancelled tasks, which have no log, share a line.
    assert (f"shards 0-1 CANCELLED (job {teach[0]['job_id']}_[0-1], from sacct): dependency never satisfied: a job "
            "it needs failed, so SLURM cancelled it; no log") in text
    assert "stopped: 1 failed, 2 dependent(s) cancelled" in text and "unknown" not in text.lower()


@pytest.mark.slurm
@pytest.mark.root
@pytest.mark.parametrize("accounting", [True, False], ids=["with-sacct", "without-accounting"])
def test_a_job_neither_slurmctld_nor_sacct_knows_is_reported_as_unknown(request, accounting, tmp_path,
                                                                        tiny_spec_file):
    env = _env(request.getfixturevalue("accounting_cluster" if accounting else "cluster"))
    run = tmp_path / "run"
    cfg = _saved_run(run, tiny_spec_file)
    # A submission whose job this cluster never ran (its ids start at 1).
    write_jobs(run, {"submissions": [{
        "submitted": "2025-01-01T00:00:00+00:00", "workdir": str(tmp_path), "config_sha256": file_sha256(cfg.path),
        "jobs": [{"key": "exam", "stage": "exam", "model": "tiny-llama", "job_id": "4242424", "shards": [0, 1],
                  "after": [], "script": str(run / "slurm" / "exam.sbatch"),
                  "log": str(run / "logs" / "exam-%A_%a.log")}]}]})
    text, status = _status(run, env)
    (exam,) = [j for j in status["jobs"] if j["key"] == "exam"]
    assert [(t["job"], t["category"], t["source"]) for t in exam["tasks"]] == \
        [("4242424_0", "unknown", None), ("4242424_1", "unknown", None)]
    assert ("shards 0-1 UNKNOWN (job 4242424_[0-1]): neither slurmctld nor the accounting database knows it, "
            "and its output is not done; no log") in text
    assert "2 unknown. Fix the cause" in text
    if accounting:
        assert status["accounting_error"] is None and "note:" not in text
    else:
        assert status["accounting_error"] == "`sacct` failed: Slurm accounting storage is disabled"
        assert "note: slurmctld has forgotten some jobs and `sacct` failed: Slurm accounting storage is disabled" \
            in text
