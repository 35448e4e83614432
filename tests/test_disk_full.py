"""A run directory on a full disk: a small tmpfs, filled up after the first shard was written.
The failing write names its path and leaves no temporary file; the shard written before stays
done and readable; once space is freed, a rerun writes only the missing shard."""
import errno
import io
import math
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

from mapd.batch.config import RunConfig
from mapd.batch.exam import SCHEMA, Exam
from mapd.batch.shards import file_sha256, manifest_path, read_stage, why_not_done

from fakes import ScriptedEngine, ScriptedPool

pytestmark = pytest.mark.root     # mounts a tmpfs

PAGE = 4096


def answer_42(request, adapter):
    """Every question answered the same way (a ScriptedEngine counts its calls: one per shard)."""
    return f"Step by step for {request.id}: the answer is 42."


@contextmanager
def small_tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path``. Needs root (CAP_SYS_ADMIN): without it the test
    fails and says so, rather than skipping and looking like a pass."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a {size} tmpfs at {path} (the disk-full tests need root): "
                    f"{done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def fill(mount: Path, leave: int = 0) -> Path:
    """Fill the file system at ``mount`` with one file, then free ``leave`` bytes (whole pages)."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (b"\0" * (1 << 16), b"\0" * PAGE, b"\0"):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
        if leave:
            os.ftruncate(fd, os.fstat(fd).st_size // PAGE * PAGE - leave)
    finally:
        os.close(fd)
    assert free_bytes(mount) == leave, f"{free_bytes(mount)} bytes free, expected {leave}"
    return filler


def free_bytes(mount: Path) -> int:
    st = os.statvfs(mount)
    return st.f_bavail * st.f_frsize


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _parquet_size(exam: Exam, shard: int) -> int:
    buffer = io.BytesIO()
    pl.DataFrame(exam.rows(shard, ScriptedEngine(answer_42)), schema=SCHEMA).write_parquet(buffer)
    return len(buffer.getvalue())


@pytest.mark.parametrize("fails", ["parquet", "manifest"])
def test_full_disk_fails_the_shard_write_cleanly_and_a_rerun_writes_only_the_missing_shard(tmp_path, caplog, fails):
    """The exam stage (real Stage code, a scripted engine) on a 1 MiB tmpfs. ``parquet``: no
    room at all, the shard file cannot be written; ``manifest``: room for the shard file but not
    for its manifest, so a complete file lies there without the manifest that would mark it done."""
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        cfg = RunConfig(task="svamp", run_dir=disk / "run", limit=4, num_shards=2)
        first = ScriptedEngine(answer_42)
        Exam(cfg).run([0], pool=ScriptedPool(first))
        exam_dir = disk / "run" / "exam"
        shard0, shard1 = Exam(cfg).path(0), Exam(cfg).path(1)
        before = pl.read_parquet(shard0)
        stamp = {p: p.stat().st_mtime_ns for p in (shard0, manifest_path(shard0))}

        leave = 0 if fails == "parquet" else math.ceil(_parquet_size(Exam(cfg), 1) / PAGE) * PAGE
        filler = fill(disk, leave)
        full = ScriptedEngine(answer_42)
        with pytest.raises(OSError) as err:
            Exam(cfg).run([1], pool=ScriptedPool(full))
        failed = shard1 if fails == "parquet" else manifest_path(shard1)
        assert err.value.errno == errno.ENOSPC
        assert str(failed) in str(err.value) and "No space left on device" in str(err.value), str(err.value)
        assert full.calls == 1
        assert temporaries(disk) == [], "a failed write left its temporary file behind"
        if fails == "manifest":
            assert shard1.is_file() and not manifest_path(shard1).exists()
        # The shard written before is intact, untouched and still counts as done.
        exam = Exam(cfg)
        assert exam.pending() == {1: "not written yet"}
        assert why_not_done(shard0, exam.identity(0)) is None
        assert exam.shard_frame(0).equals(before)
        assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())

        filler.unlink()
        again = ScriptedEngine(answer_42)
        with caplog.at_level("INFO"):
            Exam(cfg).run(pool=ScriptedPool(again))
        assert again.calls == 1, "only the missing shard is run"
        assert "exam shard 0/2: done, skipped" in caplog.text
        assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
        whole = read_stage(exam_dir, 2, exam.identity)
        assert whole.height == 4 and whole["question_id"].n_unique() == 4
        assert temporaries(disk) == []


def test_full_stage_folder_through_the_cli(tmp_path, tiny_spec_file):
    """`mapd exam` with the tiny real model, its exam folder on a full 256 KiB tmpfs (the run's
    log and config elsewhere): the error names the shard, and a rerun writes only that shard."""
    run = tmp_path / "run"
    cfg = RunConfig(task="svamp", run_dir=run, student=str(tiny_spec_file), limit=4, num_shards=2)
    mapd = [str(Path(sys.executable).parent / "mapd"), "exam", "--task", "svamp", "--limit", "4",
            "--num-shards", "2", "--run-dir", str(run), "--student", str(tiny_spec_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with small_tmpfs(run / "exam", "256k") as disk:
        Exam(cfg).run([0], pool=ScriptedPool(ScriptedEngine(answer_42)))
        shard0 = Exam(cfg).path(0)
        sha0 = file_sha256(shard0)
        filler = fill(disk)
        out = subprocess.run(mapd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode != 0
        last = out.stderr.strip().splitlines()[-1]
        assert "No space left on device" in last and str(Exam(cfg).path(1)) in last, out.stderr[-2000:]
        assert temporaries(disk) == []
        assert Exam(cfg).pending() == {1: "not written yet"} and file_sha256(shard0) == sha0

        filler.unlink()
        out = subprocess.run(mapd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "shard 0/2: done, skipped" in out.stderr and "shard 1/2: not written yet" in out.stderr
        assert "exam svamp: 4 questions" in out.stdout
        assert file_sha256(shard0) == sha0 and Exam(cfg).pending() == {}
