"""What a job script does before its stage: setup lines, an Apptainer container, binding to the
allocated CPUs, GPUs for tensor parallelism. Scripts and refusals without a cluster, then on the
real local cluster (the `cluster` fixture of tests/conftest.py) with the tiny model."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mapd.batch.config import RunConfig
from mapd.batch.graph import Graph
from mapd.slurm.cluster import SubmitError
from mapd.slurm.resources import SlurmOptions
from mapd.slurm.submit import prepare
from test_slurm import ROOT, _model, _run_args, _slurm_cli

BIN = Path(sys.executable).parent


def _no_cluster_env(tmp_path):
    return {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


# -- without a cluster ------------------------------------------------------------------------

def test_setup_lines_come_before_the_stage_submitter_first(tmp_path, tiny_spec_file):
    teacher = _model(tmp_path, tiny_spec_file, "tiny-mod", slurm={"setup": ["module load cuda/12.4"]})
    run = tmp_path / "run"
    _slurm_cli(_no_cluster_env(tmp_path), "submit", *_run_args(run, str(tiny_spec_file), [teacher]),
               "--gpus-per-node", "0", "--setup", "source /opt/venv/bin/activate",
               "--setup", "echo 'ready: $(hostname)'", "--dry-run")
    text = (run / "slurm" / "teach-tiny-mod.sbatch").read_text()
    lines = text.splitlines()
    at = [lines.index(line) for line in ("source /opt/venv/bin/activate", "echo 'ready: $(hostname)'",
                                         "module load cuda/12.4")]
    command = next(i for i, line in enumerate(lines) if "run-stage" in line)
    assert at == sorted(at) and at[-1] < command
    # The model's setup line is its own: the exam (the student's job) has only the submitter's.
    exam = (run / "slurm" / "exam.sbatch").read_text()
    assert "source /opt/venv/bin/activate" in exam and "module load" not in exam
    assert subprocess.run(["bash", "-n", str(run / "slurm" / "exam.sbatch")]).returncode == 0


def test_container_runs_the_image_mapd_with_the_run_and_models_bound(tmp_path, tiny_spec_file):
    image = tmp_path / "mapd.sif"
    image.write_bytes(b"not really an image")
    gpu_teacher = _model(tmp_path, tiny_spec_file, "tiny-tp", gpus=2)
    run = tmp_path / "run"
    cfg_args = _run_args(run, str(tiny_spec_file), [gpu_teacher])
    _slurm_cli(_no_cluster_env(tmp_path), "submit", *cfg_args, "--gpus-per-node", "2", "--container", str(image),
               "--dry-run")
    model_dir = yaml.safe_load(tiny_spec_file.read_text())["path"]
    teach = (run / "slurm" / "teach-tiny-tp.sbatch").read_text()
    binds = re.search(r"^apptainer exec --nv --bind (\S+) (\S+) mapd run-stage --run-dir (\S+) --stage teach/tiny-tp",
                      teach, re.MULTILINE)
    assert binds, teach
    assert binds.group(2) == str(image) and binds.group(3) == str(run)
    assert {str(run), model_dir} <= set(binds.group(1).split(","))
    assert "#SBATCH --gres=gpu:2" in teach
    # A job without GPUs does not ask apptainer for them.
    assert re.search(r"^apptainer exec --bind \S+ \S+ mapd run-stage", (run / "slurm" / "exam.sbatch").read_text(),
                     re.MULTILINE)


def test_bad_setup_container_and_device_are_refused_before_anything(tmp_path, tiny_spec_file):
    env = _no_cluster_env(tmp_path)
    run = tmp_path / "run"
    args = _run_args(run, str(tiny_spec_file), [str(tiny_spec_file)])
    proc = _slurm_cli(env, "submit", *args, "--gpus-per-node", "0", "--setup", "module load a\nrm -rf ~", "--dry-run",
                      check=False)
    assert proc.returncode != 0 and "holds a line break: give each line as its own --setup" in proc.stderr
    proc = _slurm_cli(env, "submit", *args, "--gpus-per-node", "0", "--container", str(tmp_path / "none.sif"),
                      "--dry-run", check=False)
    assert proc.returncode != 0 and "none.sif" in proc.stderr and "does not exist" in proc.stderr
    assert not (run / "slurm").exists()
    # An unknown device stops make before it builds or runs anything.
    make = subprocess.run(["make", "-n", "install", "DEVICE=tpu"], cwd=ROOT, capture_output=True, text=True)
    assert make.returncode != 0 and "DEVICE='tpu': must be cpu or gpu" in make.stderr
    bad = _model(tmp_path, tiny_spec_file, "tiny-bad", slurm={"setup": ["ok", "not\nok"]})
    with pytest.raises(SubmitError, match="model 'tiny-bad': setup line .* line break"):
        prepare(Graph(RunConfig(task="svamp", run_dir=tmp_path / "b", student=str(tiny_spec_file),
                                teachers=(bad,), limit=4)), SlurmOptions(gpus_per_node=0, dry_run=True))


# -- on a real local cluster ----------------------------------------------------------------

def _logs_when_done(run: Path, key: str, timeout=180) -> list[str]:
    """The logs of a job's tasks once each says how its stage exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = sorted((run / "logs").glob(f"{key}-*.log"))
        if logs and all("exited with status" in p.read_text() for p in logs):
            return [p.read_text() for p in logs]
        time.sleep(0.5)
    raise TimeoutError(f"{key} did not finish: {[p.read_text() for p in (run / 'logs').glob('*.log')]}")


@pytest.mark.slurm
@pytest.mark.root
def test_two_jobs_on_one_node_run_on_disjoint_cpus_after_their_setup(env, cluster, tmp_path, tiny_spec_file):
    run = tmp_path / "run"
    _slurm_cli(env, "submit", *_run_args(run, str(tiny_spec_file), [str(tiny_spec_file)]), "--stages", "exam",
               "--setup", "echo \"setup ran in $PWD\"", "--setup", "export MAPD_THREADS=1")
    logs = _logs_when_done(run, "exam")
    assert len(logs) == 2
    cpus = []
    for text in logs:
        assert "exited with status 0" in text, text
        # The setup line ran before the stage, and what it exported reached the stage.
        assert text.index("setup ran in ") < text.index("CPU thread(s)") < text.index("exited with status")
        (allowed,) = re.findall(r"CPUs=(\S+) \(1 allocated\)", text)
        (threads,) = re.findall(r"1 CPU thread\(s\) on CPU\(s\) (\S+)", text)
        assert allowed == threads, text
        cpus.append(allowed)
    # The node has 2 CPUs, each task asked for 1, and without a binding task plugin both would see
    # both: each ran on its own.
    assert sorted(cpus) == ["0", "1"], cpus


@pytest.mark.slurm
@pytest.mark.root
def test_a_stage_runs_in_the_container_through_apptainer(env, cluster, tmp_path, tiny_spec_file):
    """A stand-in `apptainer` on the jobs' PATH records its arguments and runs the command after
    the image, as `apptainer exec` does inside it (the real one is not installed here)."""
    shim = tmp_path / "bin" / "apptainer"
    shim.parent.mkdir()
    calls = tmp_path / "apptainer-calls.txt"
    shim.write_text(f"""#!/bin/bash
echo "$*" >> {calls}
shift                                                    # exec
while [[ "$1" == --* ]]; do [[ "$1" == --bind ]] && shift; shift; done
shift                                                    # the image
exec "$@"
""")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    image = tmp_path / "mapd.sif"
    image.write_bytes(b"image")
    env = {**env, "PATH": f"{shim.parent}{os.pathsep}{BIN}{os.pathsep}{env['PATH']}"}
    run = tmp_path / "run"
    _slurm_cli(env, "submit", *_run_args(run, str(tiny_spec_file), [str(tiny_spec_file)], shards=1), "--stages", "exam",
               "--container", str(image))
    (log,) = _logs_when_done(run, "exam")
    assert "exited with status 0" in log, log
    (call,) = calls.read_text().splitlines()
    assert call.startswith("exec --bind ") and f" {image} mapd run-stage --run-dir {run} --stage exam" in call
    assert (run / "exam" / "shard-00000-of-00001.parquet").is_file()


@pytest.mark.slurm
@pytest.mark.root
def test_two_gpus_give_tensor_parallel_two(env, cluster, tmp_path, tiny_spec_file):
    if cluster.gpus < 2:
        pytest.skip(cluster.no_gpus_because)
    student = _model(tmp_path, tiny_spec_file, "tiny-tp2", engine="vllm", gpus=2)
    run = tmp_path / "run"
    _slurm_cli(env, "submit", *_run_args(run, student, [student], shards=1), "--stages", "exam")
    assert "#SBATCH --gres=gpu:2" in (run / "slurm" / "exam.sbatch").read_text()
    # The GPUs are fake: once the engine says how it is built, the job has shown what it would get.
    deadline, text = time.monotonic() + 120, ""
    while time.monotonic() < deadline and "vLLM engine for tiny-tp2" not in text:
        time.sleep(0.5)
        text = "".join(p.read_text() for p in (run / "logs").glob("exam-*.log"))
    subprocess.run(["scancel", "--name", "mapd-exam"], env=env)
    assert "tensor_parallel_size=2" in text, text
    (devices,) = re.findall(r"CUDA_VISIBLE_DEVICES=(\S+)", text)
    assert sorted(devices.split(",")) == ["0", "1"]


@pytest.mark.slurm
@pytest.mark.root
@pytest.mark.slow
def test_training_stopped_by_the_time_limit_signal_resumes_from_its_checkpoint(env, cluster, tmp_path,
                                                                               tiny_spec_file):
    run = tmp_path / "run"
    # Training that outlasts a 3-minute limit: many epochs of the tiny model.
    args = [*_run_args(run, str(tiny_spec_file), [str(tiny_spec_file)], shards=1), "--no-answer-check",
            "--invalid-as", "4", "--keep-cut", "--epochs", "100000", "--batch-size", "1", "--lora-r", "8"]
    _slurm_cli(env, "submit", *args, "--stages", "exam,teach,review,dataset")
    _logs_when_done(run, "dataset")
    assert (run / "dataset" / "records.parquet").is_file()
    # SLURM signals USR1 `--signal-lead` s before the limit (up to a minute earlier); the job
    # script stops the stage with SIGTERM and requeues the job.
    _slurm_cli(env, "submit", *args, "--stages", "train", "--time", "3", "--signal-lead", "90")
    log_of = lambda: "".join(p.read_text() for p in (run / "logs").glob("train-*.log"))  # noqa: E731
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and "train: resumed from" not in log_of():
        time.sleep(1)
    subprocess.run(["scancel", "--name", "mapd-train"], env=env)
    text = log_of()
    assert "USR1: time limit near or preempted" in text and "requeueing job" in text, text
    (stopped,) = re.findall(r"stopped by SIGTERM after step (\d+) of \d+, checkpoint saved", text)
    (resumed,) = re.findall(r"train: resumed from \S+ \(step (\d+)\)", text)
    assert int(stopped) > 0 and resumed == stopped, text
