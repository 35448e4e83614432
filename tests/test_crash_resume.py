"""Crash and resume: `mapd distill` killed with SIGKILL at seeded points inside every stage, resumed,
killed again further on, ..., then run to the end, gives the outputs of an uninterrupted run with
the same seeds: the same records (none lost, none twice), the same adapter and card, the same
results table; and a corrupt shard on disk is detected by its checksum, redone and never read.

The harness: one uninterrupted baseline run is watched for the files it creates (shards,
manifests, checkpoints, the adapter, ...), in order: these milestones cut the run into intervals,
each labelled with the stage that produces the interval's end. The seed picks the kill points:
intervals (at least one per stage, then more at random) and a fraction of each interval's length
in the baseline. A second run directory is then driven as a chain: each run waits for its
interval's first file to appear, sleeps that fraction of the interval, and kills the process
group; the next run resumes. `MAPD_CRASH_SEED` replays a plan."""
from __future__ import annotations

import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import yaml

from mapd.batch.config import RunConfig
from mapd.batch.train import Train
from mapd.batch.graph import Graph
from mapd.batch.local import run_local
from mapd.batch.shards import StaleShardError, file_sha256, manifest_path

from fakes import ScriptedEngine, ScriptedPool

SEED = int(os.environ.get("MAPD_CRASH_SEED", "20241003"))
KILLS = 12
STAGES = ("exam", "teach", "review", "dataset", "train", "eval")
POLL = 0.005


# ---------------------------------------------------------------- the graph as a subprocess

@pytest.fixture(scope="module")
def committee(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The tiny model as student (greedy) and a two-teacher committee, one greedy and one sampled
    (its per-request seeds then matter), all sharing one engine, 12 new tokens at most."""
    folder = tmp_path_factory.mktemp("crash-registry")
    base = {"path": str(tiny_model), "engine": "transformers", "dtype": "float32", "gpus": 0, "max_model_len": 1024}
    paths = {}
    for name, temperature in [("tiny-llama", 0.0), ("tiny-teacher-a", 0.0), ("tiny-teacher-b", 0.8)]:
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({**base, "name": name, "sampling": {
            "temperature": temperature, "top_p": 1.0, "max_tokens": 12}}))
    return paths


def _distill(run: Path, committee: dict[str, Path]) -> list[str]:
    return [str(Path(sys.executable).parent / "mapd"), "distill", "--task", "svamp", "--limit", "4", "--test-limit", "4",
            "--num-shards", "2", "--run-dir", str(run), "--student", str(committee["tiny-llama"]),
            "--teachers", f"{committee['tiny-teacher-a']},{committee['tiny-teacher-b']}",
            # Every rationale accepted (the tiny model's reviews carry no score, and it always writes
            # up to max_tokens): records to train on.
            "--no-answer-check", "--invalid-as", "4", "--keep-cut",
            # Two epochs of two steps: a checkpoint after each epoch, a resume from it after a kill.
            "--epochs", "2", "--batch-size", "4", "--lora-r", "8", "--max-length", "256"]


def _start(args: list[str], out: Path) -> subprocess.Popen:
    """A new session, so that SIGKILL to the process group reaches any worker it started."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MAPD_HF_BATCH": "1"}
    with open(out, "wb") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# ---------------------------------------------------------------- milestones and the plan

def milestone(rel: Path) -> str | None:
    """The milestone a file of the run directory belongs to; None for logs and temporaries.
    A checkpoint, the adapter and the merged model are folders renamed into place at once: one
    milestone each."""
    parts = rel.parts
    if parts[0] == "logs" or any(p.startswith(".") for p in parts):
        return None
    if parts[:2] == ("train", "checkpoints") and len(parts) > 2:
        return "/".join(parts[:3])
    if parts[:2] in (("train", "adapter"), ("eval", "merged-model")):
        return "/".join(parts[:2])
    return "/".join(parts)


def _scan(run: Path, seen: dict[str, int]) -> None:
    """Add the milestones that appeared since the last scan, each with the earliest modification
    time of its files: the order in which the run wrote them, whatever the polling rate."""
    now: dict[str, int] = {}
    for folder, dirs, files in os.walk(run):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "logs"]
        for name in files:
            path = Path(folder) / name
            key = milestone(path.relative_to(run))
            if key is None or key in seen:
                continue
            try:
                mtime = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            now[key] = min(mtime, now.get(key, mtime))
    seen.update(now)


@dataclass
class Interval:
    start: str          # the milestone that opens it
    end: str            # the milestone it produces
    stage: str          # the stage that produces `end`
    seconds: float      # its length in the baseline


def intervals(seen: dict[str, int]) -> list[Interval]:
    order = sorted(seen, key=lambda k: (seen[k], k))
    stages, top = [], -1
    for key in order:
        head = key.split("/")[0]
        if head in STAGES:   # the base eval runs before training: not always in graph order
            top = max(top, STAGES.index(head))
            stages.append(head)
        else:
            stages.append("startup" if top < 0 else "final")   # config.yaml; summaries after eval
    return [Interval(order[i], order[i + 1], stages[i + 1], (seen[order[i + 1]] - seen[order[i]]) / 1e9)
            for i in range(len(order) - 1)]


def plan(seed: int, spans: list[Interval], kills: int = KILLS) -> list[tuple[int, float]]:
    """(interval index, fraction of its length) per kill, in graph order: one interval in each
    stage, the others at random, all distinct."""
    rng = random.Random(seed)
    chosen = set()
    for stage in STAGES:
        candidates = [i for i, s in enumerate(spans) if s.stage == stage]
        if candidates:
            chosen.add(rng.choice(candidates))
    # And training after each checkpoint, so that it resumes from one mid-way and from the last.
    chosen |= {i for i, s in enumerate(spans) if s.start.startswith("train/checkpoints/")}
    rest = [i for i in range(len(spans)) if i not in chosen]
    chosen |= set(rng.sample(rest, min(len(rest), kills - len(chosen))))
    return [(i, rng.uniform(0.05, 0.95)) for i in sorted(chosen)]


# ---------------------------------------------------------------- where a kill landed

STAGE_LINE = re.compile(r"batch\.stage: (exam|teach|review|eval)(?:/(\S+))? shard ")


def landed(log_lines: list[str]) -> str:
    """The stage the run was in when it was killed, from the lines it logged."""
    where = "startup"
    for line in log_lines:
        m = STAGE_LINE.search(line)
        if m:
            where = f"{m.group(1)} {m.group(2) or ''}".strip()
        elif "dataset: to do" in line:
            where = "dataset"
        elif "records written to" in line or "dataset: done, skipped" in line:
            # The dataset is done: training comes next (or, after eval, the closing summaries).
            where = "final" if where.startswith("eval") or where == "final" else "train"
        elif "train: adapter written" in line or "train: done, skipped" in line:
            where = "eval"
        elif "training.loop: train:" in line or "train: to do" in line:
            where = "train"
        elif "models loaded in this run" in line:
            where = "final"
    return where


# ---------------------------------------------------------------- what a run directory holds

def done_shards(run: Path) -> dict[str, int]:
    """Every shard whose manifest says it is complete, checked: the manifest is whole JSON and
    the file beside it has the recorded checksum. Relative path -> manifest mtime."""
    found = {}
    for m in run.rglob("*.manifest.json"):
        if any(p.startswith(".") for p in m.relative_to(run).parts):
            continue
        manifest = json.loads(m.read_text())                     # never half-written
        data = m.parent / manifest["file"]
        assert data.is_file() and file_sha256(data) == manifest["sha256"], f"{data}: manifest without its file"
        found[str(data.relative_to(run))] = m.stat().st_mtime_ns
    return found


def _same_frame(a: Path, b: Path) -> bool:
    return pl.read_parquet(a).equals(pl.read_parquet(b))


def card_identity(card: dict, run: Path) -> dict:
    """The card's fields that identify the training (not its timings or resume counts), with
    the run directory's path taken out."""
    keep = ("format", "base_model", "config_identity", "counts", "steps", "steps_per_epoch", "horizon",
            "final_losses", "last_epoch_mean_losses", "train_tokens")
    text = json.dumps({"dataset_sha256": card["dataset"]["sha256"], **{k: card[k] for k in keep}}, sort_keys=True)
    return json.loads(text.replace(str(run), "<run>"))


def adapter_tensors(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "train" / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_killed_and_resumed_distill_equals_an_uninterrupted_one(tmp_path, committee):
    base = tmp_path / "baseline"
    seen: dict[str, int] = {}
    proc = _start(_distill(base, committee), tmp_path / "baseline.out")
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        _scan(base, seen)
        time.sleep(POLL)
    if proc.poll() is None:
        _kill(proc)
        pytest.fail("the baseline run took more than 10 minutes")
    _scan(base, seen)
    assert proc.returncode == 0, (tmp_path / "baseline.out").read_text()[-3000:]

    spans = intervals(seen)
    points = plan(SEED, spans)
    assert points == plan(SEED, spans), "the same seed replays the same plan"
    assert len(points) >= 10 and {spans[i].stage for i, _ in points} >= set(STAGES), [spans[i] for i, _ in points]
    order = [s.start for s in spans] + [spans[-1].end]

    chain = tmp_path / "chain"
    log = chain / "logs" / "mapd.log"
    kills, done_at_kills, states_matched = [], {}, 0
    for k, (planned, fraction) in enumerate(points):
        present = [i for i, key in enumerate(order) if (chain / key).exists()]
        first_new = max(present) + 1 if present else 0
        index = max(planned, first_new)               # a point the last run already passed moves on
        if index >= len(spans):
            break
        span = spans[index]
        offset = log.stat().st_size if log.exists() else 0
        proc = _start(_distill(chain, committee), tmp_path / f"chain-{k}.out")
        deadline = time.time() + 300
        while not (chain / span.start).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(POLL)
        if proc.poll() is not None:
            pytest.fail(f"run {k} ended (rc {proc.returncode}) before its kill point {span.start}:\n"
                        + (tmp_path / f"chain-{k}.out").read_text()[-3000:])
        assert time.time() < deadline, f"run {k} never reached {span.start}"
        time.sleep(fraction * span.seconds)
        _kill(proc)
        with open(log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        missing = next((key for key in order[index + 1:] if not (chain / key).exists()), None)
        checkpointed = not (chain / "train" / "adapter").exists() and any(
            (chain / "train" / "checkpoints").glob("step-*"))
        kills.append({"run": k, "interval": index, "planned": planned, "after": span.start,
                      "delay_s": round(fraction * span.seconds, 3), "landed": landed(lines),
                      "working_on": missing, "checkpointed": checkpointed,
                      "last_log": lines[-1][24:] if lines else ""})
        # Whatever the kill interrupted, what counts as done is complete and equals the baseline.
        done = done_shards(chain)
        mismatched = [rel for rel in done if not _same_frame(chain / rel, base / rel)]
        assert not mismatched, f"kill {k}: finished outputs differ from the uninterrupted run: {mismatched}"
        states_matched += 1
        for rel, stamp in done.items():
            # The dataset stage is one unit, done when its records are: decisions written
            # before a kill that came ahead of the records are written again, by design.
            if not rel.startswith("dataset/") or "dataset/records.parquet" in done:
                done_at_kills.setdefault(rel, stamp)

    final = subprocess.run(_distill(chain, committee), capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "MAPD_HF_BATCH": "1"})
    assert final.returncode == 0, final.stderr[-3000:]
    for k in kills:
        print(f"kill {k['run']}: interval {k['interval']} (planned {k['planned']}) {k['delay_s']} s after "
              f"{k['after']}: landed in {k['landed']}, working on {k['working_on']} | {k['last_log']}")

    # The outputs equal the uninterrupted run's.
    records, expected = (pl.read_parquet(r / "dataset" / "records.parquet") for r in (chain, base))
    lost = set(expected["record_id"]) - set(records["record_id"])
    duplicated = records.height - records["record_id"].n_unique()
    assert not lost and not duplicated and records.height > 0
    assert records.equals(expected)
    assert _same_frame(chain / "dataset" / "decisions.parquet", base / "dataset" / "decisions.parquet")
    shards = done_shards(base)
    assert set(done_shards(chain)) == set(shards)
    assert all(_same_frame(chain / rel, base / rel) for rel in shards)
    cards = [json.loads((r / "train" / "adapter" / "card.json").read_text()) for r in (chain, base)]
    assert card_identity(cards[0], chain) == card_identity(cards[1], base)
    import torch
    ours, theirs = adapter_tensors(chain), adapter_tensors(base)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)
    if any(k["checkpointed"] for k in kills):
        assert cards[0]["resumes"] >= 1, "training was killed after a checkpoint but did not resume from it"
    results = [json.loads((r / "eval" / "results.json").read_text().replace(str(r), "<run>")) for r in (chain, base)]
    assert results[0] == results[1]
    # Nothing finished before a kill was written again by a later run.
    now = done_shards(chain)
    redone = [rel for rel, stamp in done_at_kills.items() if now.get(rel) != stamp]
    assert not redone, f"finished shards were redone after a resume: {redone}"

    stages = collections.Counter(k["landed"].split()[0] for k in kills)
    leftovers = sorted(str(p.relative_to(chain)) for p in chain.rglob("*") if p.name.startswith("."))
    assert len(kills) >= 10, kills
    assert len(set(stages) & set(STAGES)) >= 5, kills
    print(f"\ncrash-resume seed {SEED}: {len(kills)} kill points tried, landed in "
          f"{dict(stages)} ({len(set(stages) & set(STAGES))} stages); {states_matched}/{len(kills)} states "
          f"after a kill matched the uninterrupted run, and the final run matched: {records.height} records, "
          f"0 lost, 0 duplicated, adapter equal ({cards[0]['resumes']} training resume(s)), results equal; "
          f"{len(leftovers)} temporary file(s) left by kills, none read: {leftovers}")


# ---------------------------------------------------------------- corrupt shards downstream

def committee_answer(request, adapter):
    """Every model answers with a final answer and a score: all rationales are accepted."""
    return f"For {request.id}: the answer is 7. Score: [4]"


def test_a_corrupt_shard_is_refused_downstream_never_read_and_redone(tmp_path, monkeypatch, caplog):
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=4, num_shards=2,
                    teachers=("demo-teacher-a", "demo-teacher-b"), policy="paper")
    run_local(Graph(cfg), ScriptedPool(ScriptedEngine(committee_answer)), through="dataset")
    run = Path(cfg.run_dir)
    records = pl.read_parquet(run / "dataset" / "records.parquet")
    before = {rel: pl.read_parquet(run / rel) for rel in done_shards(run)}

    exam1 = run / "exam" / "shard-00001-of-00002.parquet"
    teach0 = run / "teach" / "demo-teacher-a" / "shard-00000-of-00002.parquet"
    review1 = run / "review" / "demo-teacher-b" / "shard-00001-of-00002.parquet"
    records_file = run / "dataset" / "records.parquet"
    exam1.write_bytes(exam1.read_bytes()[: exam1.stat().st_size // 2])           # truncated
    for path in (teach0, records_file):                                           # one byte flipped
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    m = manifest_path(review1)
    m.write_text(m.read_text()[:40])                                              # a torn manifest
    corrupt = {exam1, teach0, records_file}

    read = []
    real_read = pl.read_parquet
    monkeypatch.setattr(pl, "read_parquet", lambda source, *a, **k: read.append(Path(source)) or real_read(source, *a, **k))
    graph = Graph(cfg)
    with pytest.raises(StaleShardError, match=rf"{exam1}: its Parquet file does not match the checksum"):
        graph.one("exam").results()
    with pytest.raises(StaleShardError, match=rf"{teach0}: its Parquet file does not match the checksum"):
        graph.named("teach")[0].shard_frame(0)
    with pytest.raises(StaleShardError, match=rf"{review1}: not written yet"):
        graph.named("review")[1].results()
    with pytest.raises(StaleShardError, match=r"train: waits for dataset \(waits for exam shard 1 \(its Parquet"):
        Train(graph.one("dataset")).run()
    with pytest.raises(StaleShardError):
        graph.one("dataset").run()
    assert not corrupt & set(read), "a corrupt file was read"

    engine = ScriptedEngine(committee_answer)
    caplog.clear()      # only the rerun's log: an earlier test's CLI may have left the root logger at INFO
    with caplog.at_level("INFO"):
        run_local(Graph(cfg), ScriptedPool(engine), through="dataset")
    rewritten = set(re.findall(r"rows written to (\S+)", caplog.text))
    assert rewritten == {str(exam1), str(teach0), str(review1)}, rewritten
    assert "exam shard 1/2: its Parquet file does not match the checksum" in caplog.text
    assert "dataset: to do (its Parquet file does not match the checksum" in caplog.text
    assert pl.read_parquet(records_file).equals(records)
    assert {rel: real_read(run / rel) for rel in done_shards(run)}.keys() == before.keys()
    assert all(real_read(run / rel).equals(frame) for rel, frame in before.items())
