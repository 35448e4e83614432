"""The exam stage: bookkeeping with a scripted engine, the CLI with a tiny real model (kill and
resume, bad input), and the real SmolLM2 on vLLM."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from mapd.batch.config import RunConfig
from mapd.batch.exam import SCHEMA, Exam
from mapd.batch.shards import manifest_path, shard_path

from fakes import ScriptedEngine, ScriptedPool


def _svamp_answer(gold_by_id):
    def answer(request, adapter):
        k = int(request.id.split("-")[1])
        if k % 3 == 0:
            return f"Adding up, the answer is {gold_by_id[request.id]}."
        if k % 3 == 1:
            return "The answer is 123456789."
        return "I am not sure how to do this."
    return answer


@pytest.fixture
def cfg(tmp_path):
    return RunConfig(task="svamp", run_dir=tmp_path / "run", limit=12, num_shards=3)


def test_exam_writes_graded_shards_and_a_summary(cfg):
    exam = Exam(cfg)
    gold = {q.id: q.gold for q in exam.questions}
    engine = ScriptedEngine(_svamp_answer(gold))
    exam.run(pool=ScriptedPool(engine))
    assert engine.calls == 3
    df = exam.results()
    assert df.schema == pl.Schema(SCHEMA)
    assert df["question_id"].to_list() == [q.id for q in exam.questions]
    expected = ["correct" if int(i.split("-")[1]) % 3 == 0 else "wrong" if int(i.split("-")[1]) % 3 == 1
                else "unparseable" for i in df["question_id"]]
    assert df["verdict"].to_list() == expected
    assert df.filter(pl.col("verdict") == "unparseable")["answer"].null_count() == expected.count("unparseable")
    summary = exam.summary()
    assert summary["correct"] + summary["mistakes"] + summary["unparseable"] == 12
    assert summary["correct"] == expected.count("correct") and summary["mistakes"] == expected.count("wrong")
    assert json.loads((Path(cfg.run_dir) / "exam" / "summary.json").read_text()) == summary
    assert "Problem: " + exam.questions[0].text in df["prompt"][0]


def test_rerun_skips_done_shards_and_redoes_changed_ones(cfg, caplog):
    exam = Exam(cfg)
    gold = {q.id: q.gold for q in exam.questions}
    exam.run(pool=ScriptedPool(ScriptedEngine(_svamp_answer(gold))))
    again = ScriptedEngine(_svamp_answer(gold))
    Exam(cfg).run(pool=ScriptedPool(again))
    assert again.calls == 0
    # One shard lost its file: only it is redone.
    shard_path(Path(cfg.run_dir) / "exam", 1, 3).unlink()
    again = ScriptedEngine(_svamp_answer(gold))
    Exam(cfg).run(pool=ScriptedPool(again))
    assert again.calls == 1
    # A changed seed changes every request: all shards are redone, and the log says why.
    from dataclasses import replace
    again = ScriptedEngine(_svamp_answer(gold))
    with caplog.at_level("INFO"):
        Exam(replace(cfg, seed=1)).run(pool=ScriptedPool(again))
    assert again.calls == 3
    assert "written by another configuration (seed: 731 -> 1)" in caplog.text


def _mapd(*args):
    """The installed console script, as the Makefile calls it."""
    return [str(Path(sys.executable).parent / "mapd"), *args]


def _cli_env(extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.update(extra or {})
    return env


def test_killed_exam_resumes_without_redoing_finished_shards(tmp_path, tiny_spec_file):
    run_dir = tmp_path / "run"
    args = ["exam", "--task", "gsm8k", "--limit", "48", "--num-shards", "6", "--run-dir", str(run_dir),
            "--student", str(tiny_spec_file)]
    # One request per batch makes a shard take about a second: time to kill between shards.
    proc = subprocess.Popen(_mapd(*args), env=_cli_env({"MAPD_HF_BATCH": "1"}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = manifest_path(shard_path(run_dir / "exam", 0, 6))
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (run_dir / "exam").glob("*.manifest.json")}
    assert 1 <= len(finished) < 6, "the kill should land between the first and the last shard"
    leftovers = [p for p in (run_dir / "exam").iterdir() if p.name.endswith(".tmp")]

    out = subprocess.run(_mapd(*args), env=_cli_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "exam gsm8k: 48 questions" in out.stdout
    for name, mtime in finished.items():
        assert (run_dir / "exam" / name).stat().st_mtime_ns == mtime, f"{name} was redone"
    assert out.stderr.count("done, skipped") == len(finished)
    # A crash may leave at most one temporary file behind, never a shard that counts as done.
    assert len(leftovers) <= 1

    # The resumed run equals an uninterrupted one (greedy decoding).
    fresh = tmp_path / "fresh"
    clean = subprocess.run(_mapd(*args[:-4], "--run-dir", str(fresh), "--student", str(tiny_spec_file)),
                           env=_cli_env(), capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr
    cfg = RunConfig(task="gsm8k", run_dir=run_dir, student=str(tiny_spec_file), limit=48, num_shards=6)
    resumed = Exam(cfg).results().drop("prompt")
    uninterrupted = Exam(RunConfig(**{**cfg.__dict__, "run_dir": fresh})).results().drop("prompt")
    assert resumed.equals(uninterrupted)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "gsm8k" / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n'),
     r"train.jsonl: row 2: .*JSON"),
    (lambda d: (d / "gsm8k" / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n'),
     r"train.jsonl: row 2: field 'answer'"),
    (lambda d: (d / "gsm8k" / "train.jsonl").write_bytes(b'{"question": "caf\xe9?", "answer": "#### 1"}\n'),
     r"train.jsonl: not valid UTF-8 \(invalid continuation byte at byte 17\)"),
])
def test_bad_data_is_reported_with_file_row_and_field(tmp_path, tiny_spec_file, data_copy, damage, message):
    damage(data_copy)
    out = subprocess.run(_mapd("exam", "--task", "gsm8k", "--data", str(data_copy / "gsm8k"),
                               "--run-dir", str(tmp_path / "run"), "--student", str(tiny_spec_file)),
                         env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert re.search(message, out.stderr), out.stderr
    assert "Traceback" not in out.stderr and "loaded model" not in out.stderr   # found before any model loads


def test_missing_paths_are_named(tmp_path, tiny_spec_file):
    out = subprocess.run(_mapd("exam", "--task", "svamp", "--data", str(tmp_path / "nowhere"),
                               "--run-dir", str(tmp_path / "run"), "--student", str(tiny_spec_file)),
                         env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and str(tmp_path / "nowhere") in out.stderr and "Traceback" not in out.stderr
    spec = tmp_path / "gone.yaml"
    spec.write_text(f"name: gone\npath: {tmp_path / 'no-model'}\nengine: transformers\ngpus: 0\n")
    out = subprocess.run(_mapd("exam", "--task", "svamp", "--limit", "2", "--run-dir", str(tmp_path / "run2"),
                               "--student", str(spec)), env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and f"no model folder at {tmp_path / 'no-model'}" in out.stderr
