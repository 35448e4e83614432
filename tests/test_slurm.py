"""The SLURM executor: job scripts and refusals (no cluster needed), then a real one-node cluster
on localhost (tests/slurm_cluster.py) running the pipeline with the tiny model: the same outputs
as the local executor, a failed shard with its dependents cancelled and a rerun of only what is
missing, fake GPUs, and the time-limit signal that requeues a task."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from mapd.batch.config import RunConfig
from mapd.batch.graph import Graph
from mapd.batch.shards import manifest_path
from mapd.slurm.jobs import array_spec, parse_array
from mapd.slurm.cluster import SubmitError
from mapd.slurm.resources import SlurmOptions, time_seconds
from mapd.slurm.submit import prepare, submit

ROOT = Path(__file__).resolve().parents[1]
MAPD = str(Path(sys.executable).parent / "mapd")
STAGE_DIRS = ("exam", "teach", "review", "dataset", "eval")
# Small, quick training; reviews of a random model carry no score, so count those as 4 to
# give the tiny committee records to train on.
# --keep-cut: the tiny random model always writes up to max_tokens; without it nothing is trained on.
TRAIN_ARGS = ("--epochs", "1", "--batch-size", "2", "--lora-r", "8", "--keep-cut")


def _model(folder: Path, base: Path, name: str, **changes) -> str:
    spec = yaml.safe_load(base.read_text())
    spec.update(name=name, **changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _run_args(run_dir, student, teachers, *extra, limit=4, shards=2):
    return ["--task", "svamp", "--run-dir", str(run_dir), "--student", student, "--teachers", ",".join(teachers),
            "--limit", str(limit), "--test-limit", str(limit), "--num-shards", str(shards), *extra]


def _cfg(run_dir, student, teachers, limit=4, shards=2, **kw):
    return RunConfig(task="svamp", run_dir=Path(run_dir), student=student, teachers=tuple(teachers), limit=limit,
                     num_shards=shards, **kw)


# -- without a cluster ------------------------------------------------------------------------

def test_array_specs_and_time_limits():
    assert array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert array_spec([3], limit=2) == "3%2"
    assert parse_array("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert parse_array("0-6:3%2") == [0, 3, 6]
    assert time_seconds("90") == 5400 and time_seconds("1:30") == 90 and time_seconds("2:00:00") == 7200
    assert time_seconds("1-12") == 129600 and time_seconds("1-00:00:30") == 86430
    with pytest.raises(SubmitError, match="not a SLURM time"):
        time_seconds("2h")


def test_a_job_runs_exactly_the_saved_configuration(tmp_path, tiny_spec_file):
    """Every setting goes through config.yaml and comes back the same: a job runs from it."""
    cfg = _cfg(tmp_path / "run", str(tiny_spec_file), [str(tiny_spec_file)], engine="transformers", seed=5,
               policy="paper", selection="all", feedback=False, data=str(ROOT / "batch" / "data" / "svamp"),
               policy_overrides={"threshold": 2.5, "min_reviews": 2, "answer_check": True,
                                 "review_feedback": False, "invalid_as": 3},
               train_preset="paper", train_overrides={"alpha": 0.25, "epochs": 2, "max_steps": 7})
    cfg.save()
    assert RunConfig.load(tmp_path / "run") == cfg


def test_mapd_has_the_slurm_commands():
    from mapd.cli import main

    assert {"submit", "status", "run-stage"} <= set(main.commands)


def test_dry_run_writes_a_readable_rerunnable_script(tmp_path, tiny_spec_file):
    big = _model(tmp_path, tiny_spec_file, "tiny-big", gpus=4,
                 slurm={"cpus": 8, "mem": "64G", "time": "12:00:00", "extra": ["--constraint=a100"]})
    cfg = _cfg(tmp_path / "run", str(tiny_spec_file), [big, str(tiny_spec_file)])
    opts = SlurmOptions(partition="gpu", account="proj-1", qos="normal", gpus_per_node=4, dry_run=True)
    planned = {p.job.key: p for p in submit(Graph(cfg), opts)}
    assert list(planned) == ["exam", "teach-tiny-big", "teach-tiny-llama", "review-tiny-big",
                             "review-tiny-llama", "dataset", "train", "eval-base", "eval-distilled"]
    assert "--stage eval/distilled" in (tmp_path / "run" / "slurm" / "eval-distilled.sbatch").read_text()
    script = tmp_path / "run" / "slurm" / "teach-tiny-big.sbatch"
    text = script.read_text()
    sbatch = re.findall(r"^#SBATCH (\S+)$", text, re.MULTILINE)
    for line in ("--array=0-1", "--gres=gpu:4", "--nodes=1", "--cpus-per-task=8", "--mem=64G", "--time=12:00:00",
                 "--partition=gpu", "--account=proj-1", "--qos=normal", "--requeue", "--signal=B:USR1@300",
                 "--constraint=a100", f"--output={tmp_path}/run/logs/teach-tiny-big-%A_%a.log"):
        assert line in sbatch, line
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK"):
        assert f"export {var}=1" in text
    assert "trap on_usr1 USR1" in text and "scontrol requeue" in text and "CUDA_VISIBLE_DEVICES" in text
    assert f"{MAPD} run-stage --run-dir {tmp_path}/run --stage teach/tiny-big \"${{shard_args[@]}}\"" in text
    # The student's defaults: one CPU, no GPU, the default time limit.
    exam = (tmp_path / "run" / "slurm" / "exam.sbatch").read_text()
    assert "--gres" not in exam and "#SBATCH --cpus-per-task=1" in exam and "#SBATCH --time=4:00:00" in exam
    assert "--array" not in (tmp_path / "run" / "slurm" / "dataset.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert not (tmp_path / "run" / "slurm" / "jobs.json").exists()


@pytest.mark.parametrize("run_name", ["has space", "semi;colon", "dollar$HOME", "back`tick`"])
def test_unsafe_run_dir_is_refused(tmp_path, tiny_spec_file, run_name):
    cfg = _cfg(tmp_path / run_name, str(tiny_spec_file), [str(tiny_spec_file)])
    with pytest.raises(SubmitError, match="run directory .* unsafe"):
        prepare(Graph(cfg), SlurmOptions(gpus_per_node=0, dry_run=True))


def test_unsafe_model_name_missing_model_and_too_many_gpus_are_refused(tmp_path, tiny_spec_file):
    student = str(tiny_spec_file)
    opts = SlurmOptions(gpus_per_node=2, dry_run=True)
    bad = _model(tmp_path, tiny_spec_file, "x;rm -rf ~")
    with pytest.raises(SubmitError, match="model name 'x;rm -rf ~' .* unsafe"):
        prepare(Graph(_cfg(tmp_path / "a", student, [bad])), opts)
    gone = _model(tmp_path, tiny_spec_file, "tiny-gone", path=str(tmp_path / "no-such-model"))
    with pytest.raises(SubmitError, match="teach/tiny-gone: .*no model folder"):
        prepare(Graph(_cfg(tmp_path / "b", student, [gone])), opts)
    four = _model(tmp_path, tiny_spec_file, "tiny-four", gpus=4)
    with pytest.raises(SubmitError, match=r"asks for 4 GPU\(s\) on one node .* at most 2 \(--gpus-per-node\)"):
        prepare(Graph(_cfg(tmp_path / "c", student, [four])), opts)
    with pytest.raises(SubmitError, match="partition 'a b'"):
        prepare(Graph(_cfg(tmp_path / "d", student, [student])), SlurmOptions(partition="a b", dry_run=True))
    with pytest.raises(SubmitError, match="needs exam, which is not done"):
        prepare(Graph(_cfg(tmp_path / "e", student, [student])),
                SlurmOptions(gpus_per_node=0, stages=("teach", "dataset"), dry_run=True))
    for folder in "abcde":
        assert not (tmp_path / folder / "slurm").exists()


# -- on a real local cluster ----------------------------------------------------------------

def _slurm_cli(env, *args, check=True, timeout=60):
    proc = subprocess.run([MAPD, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"mapd {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _wait(env, run_dir, timeout=150) -> dict:
    proc = _slurm_cli(env, "status", "--run-dir", str(run_dir), "--wait", "--interval", "1", "--json",
                      check=False, timeout=timeout)
    if proc.returncode not in (0, 1):
        raise AssertionError(proc.stderr)
    return json.loads(proc.stdout)


def _frames(run_dir: Path) -> dict[str, pl.DataFrame]:
    return {str(p.relative_to(run_dir)): pl.read_parquet(p) for stage in STAGE_DIRS
            for p in sorted((run_dir / stage).rglob("*.parquet"))}


@pytest.mark.slurm
@pytest.mark.root
@pytest.mark.slow
def test_slurm_run_equals_the_local_executor(env, tmp_path, tiny_spec_file):
    teachers = [_model(tmp_path, tiny_spec_file, n, sampling={"temperature": t, "top_p": 1.0, "max_tokens": 8})
                for n, t in (("tiny-a", 0.8), ("tiny-b", 1.0))]
    local_run, slurm_run = tmp_path / "local", tmp_path / "on-slurm"
    extra = ("--no-answer-check", "--invalid-as", "4", *TRAIN_ARGS)
    # The local executor (`mapd distill`: every stage, every shard) runs alongside, on the same cores.
    local = subprocess.Popen([MAPD, "distill", *_run_args(local_run, str(tiny_spec_file), teachers, *extra)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = _slurm_cli(env, "submit", *_run_args(slurm_run, str(tiny_spec_file), teachers, *extra)).stdout
    assert out.count("job ") == 9 and "after" in out
    status = _wait(env, slurm_run, timeout=300)
    assert local.wait(timeout=300) == 0, local.stdout.read()
    # exam 2 + teach 2x2 + review 2x2 + dataset + train + eval base 2 + eval distilled 2 tasks
    assert status["done"] and status["counts"]["completed"] == 16, status

    record = json.loads((slurm_run / "slurm" / "jobs.json").read_text())["submissions"][0]
    ids = {j["key"]: j["job_id"] for j in record["jobs"]}
    deps = {j["key"]: j["after"] for j in record["jobs"]}
    assert deps["exam"] == [] and deps["teach-tiny-a"] == [ids["exam"]]
    assert deps["dataset"] == [ids[k] for k in ("exam", "teach-tiny-a", "teach-tiny-b",
                                                "review-tiny-a", "review-tiny-b")]
    assert {j["key"]: j["shards"] for j in record["jobs"]}["review-tiny-b"] == [0, 1]
    for shard in (0, 1):
        log = (slurm_run / "logs" / f"teach-tiny-b-{ids['teach-tiny-b']}_{shard}.log").read_text()
        assert "CUDA_VISIBLE_DEVICES=<unset>" in log and f"shard {shard}/2: 4 rows" in log

    local_frames, slurm_frames = _frames(local_run), _frames(slurm_run)
    assert len(local_frames) == 16 and set(local_frames) == set(slurm_frames)
    assert local_frames["dataset/records.parquet"].height > 0
    for name, frame in local_frames.items():
        assert frame.equals(slurm_frames[name]), name
    from safetensors.torch import load_file
    adapters = [load_file(run / "train" / "adapter" / "adapter_model.safetensors") for run in (local_run, slurm_run)]
    assert adapters[0].keys() == adapters[1].keys() and all(adapters[0][k].equal(adapters[1][k]) for k in adapters[0])
    results = [json.loads((run / "eval" / "results.json").read_text()) for run in (local_run, slurm_run)]
    assert {k: v for k, v in results[0].items() if k != "adapter"} == \
        {k: v for k, v in results[1].items() if k != "adapter"}
    # A rerun has nothing left to submit.
    assert "nothing to submit" in _slurm_cli(env, "submit", *_run_args(slurm_run, str(tiny_spec_file), teachers,
                                                                       *extra)).stdout


@pytest.mark.slurm
@pytest.mark.root
@pytest.mark.slow
def test_failed_shard_cancels_dependents_and_a_rerun_does_only_what_is_missing(env, tmp_path, tiny_spec_file):
    teacher = _model(tmp_path, tiny_spec_file, "tiny-t")
    run = tmp_path / "run"
    args = _run_args(run, str(tiny_spec_file), [teacher], "--no-answer-check", *TRAIN_ARGS)
    # Shard 1 of the teacher cannot be written: a folder stands where its file goes.
    blocker = run / "teach" / "tiny-t" / "shard-00001-of-00002.parquet"
    (blocker / "in-the-way").mkdir(parents=True)
    _slurm_cli(env, "submit", *args)
    status = _wait(env, run)
    jobs = {j["key"]: j for j in status["jobs"]}
    assert jobs["exam"]["shards_done"] == 2 and jobs["teach-tiny-t"]["shards_done"] == 1
    failed = [t for t in jobs["teach-tiny-t"]["tasks"] if t["category"] == "failed"]
    assert [t["shard"] for t in failed] == [1] and "Is a directory; could not write" in Path(failed[0]["log"]).read_text()
    assert jobs["dataset"]["tasks"][0]["state"] == "CANCELLED" and jobs["dataset"]["tasks"][0]["dependency_failed"]
    # dataset, then train and the 2 tasks of the distilled eval; the base eval needs none of them.
    assert status["dependents_cancelled"] == 4 and not status["done"]
    assert jobs["eval-base"]["shards_done"] == 2
    text = _slurm_cli(env, "status", "--run-dir", str(run)).stdout
    assert re.search(r"teach/tiny-t\s+shards 1/2 done\s+jobs: 1 completed, 1 failed", text), text
    assert f"shard 1 FAILED (job {failed[0]['job']}, exit 1:0, NonZeroExitCode): log {failed[0]['log']}" in text
    assert "dependency never satisfied" in text and "4 dependent(s) cancelled" in text

    done = [run / "exam" / f"shard-0000{i}-of-00002.parquet" for i in (0, 1)] + \
           [run / "teach" / "tiny-t" / "shard-00000-of-00002.parquet"]
    before = {p: (manifest_path(p).read_bytes(), manifest_path(p).stat().st_mtime_ns, p.stat().st_mtime_ns)
              for p in done}
    (blocker / "in-the-way").rmdir()
    blocker.rmdir()
    out = _slurm_cli(env, "submit", *args).stdout
    assert out.startswith("teach/tiny-t: job ") and "(array 1 of 2)" in out and "exam" not in out
    assert "dataset: job" in out
    status = _wait(env, run)
    assert status["done"], status
    record = json.loads((run / "slurm" / "jobs.json").read_text())["submissions"]
    assert len(record) == 2 and [(j["key"], j["shards"]) for j in record[1]["jobs"]] == [
        ("teach-tiny-t", [1]), ("dataset", None), ("train", None), ("eval-distilled", [0, 1])]
    after = {p: (manifest_path(p).read_bytes(), manifest_path(p).stat().st_mtime_ns, p.stat().st_mtime_ns)
             for p in done}
    assert after == before
    assert pl.read_parquet(run / "dataset" / "records.parquet").height > 0
    assert "all stages done" in _slurm_cli(env, "status", "--run-dir", str(run)).stdout


@pytest.mark.slurm
@pytest.mark.root
def test_fake_gpus_each_task_gets_its_own_device(env, cluster, tmp_path, tiny_spec_file):
    if cluster.gpus < 2:
        pytest.skip(cluster.no_gpus_because)
    student = _model(tmp_path, tiny_spec_file, "tiny-gpu", gpus=1)
    too_big = _model(tmp_path, tiny_spec_file, "tiny-gpu3", gpus=3)
    # The node's GPU count comes from `scontrol show node`: 3 is refused before anything is submitted.
    proc = _slurm_cli(env, "submit", *_run_args(tmp_path / "big", too_big, [student]), check=False)
    assert proc.returncode != 0 and "asks for 3 GPU(s) on one node" in proc.stderr and "at most 2" in proc.stderr
    assert not (tmp_path / "big" / "slurm" / "jobs.json").exists()

    run = tmp_path / "run"
    _slurm_cli(env, "submit", *_run_args(run, student, [student]), "--stages", "exam")
    assert "#SBATCH --gres=gpu:1" in (run / "slurm" / "exam.sbatch").read_text()
    status = _wait(env, run)
    (exam,) = [j for j in status["jobs"] if j["stage"] == "exam"]
    assert exam["shards_done"] == 2 and exam["counts"] == {"completed": 2}
    seen = {}
    for task in exam["tasks"]:
        devices = re.findall(r"CUDA_VISIBLE_DEVICES=(\S+)", Path(task["log"]).read_text())
        assert len(devices) == 1, devices
        seen[task["shard"]] = devices[0]
    # Both tasks ran at once on the two fake GPUs of the node: each saw its own.
    assert sorted(seen.values()) == ["0", "1"], seen


@pytest.mark.slurm
@pytest.mark.root
def test_usr1_before_the_time_limit_stops_and_requeues_the_task(env, cluster, tmp_path, tiny_spec_file):
    run = tmp_path / "run"
    args = _run_args(run, str(tiny_spec_file), [str(tiny_spec_file)], shards=1)
    _slurm_cli(env, "submit", *args, "--stages", "exam")
    record = json.loads((run / "slurm" / "jobs.json").read_text())["submissions"][0]["jobs"][0]
    job = f"{record['job_id']}_0"
    log = Path(record["log"].replace("%A", record["job_id"]).replace("%a", "0"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (log.exists() and "CUDA_VISIBLE_DEVICES" in log.read_text()):
        time.sleep(0.1)
    # What SLURM does at --signal=B:USR1@<lead> before the limit: signal the batch shell only.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "requeueing job" not in log.read_text():
        time.sleep(0.2)
    text = log.read_text()
    assert "USR1: time limit near or preempted" in text and "requeueing job" in text, text
    show = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True).stdout
    assert re.search(r"JobState=(PENDING|REQUEUED)", show) and "Restarts=1" in show, show
    # The stage was stopped before it wrote: no shard, no leftover temporary file.
    assert not (run / "exam").exists() or not any((run / "exam").iterdir())
    # While it waits to run again, a second submission is refused.
    proc = _slurm_cli(env, "submit", *args, check=False)
    assert proc.returncode != 0 and "still queued or running" in proc.stderr
    subprocess.run(["scancel", record["job_id"]], env=env, check=True)
