"""Scale of the bookkeeping: exam -> teach -> review -> dataset with an engine that answers
instantly, so what is measured is this project's own code (prompt rendering, grading, Parquet
shards, manifests, joins, decisions, selection), not a model.

    .venv/bin/python bench/bookkeeping_scale.py [--sizes 10000,100000] [--teachers 5] [--shards 4]

Each size runs in its own process (peak RSS is per process); the table gives wall time per
stage and peak memory, and under it how each grows from the smallest size to the largest
(linear: as much as the questions). To compare two versions of the code, run this same script
in a git worktree of the other commit. The teachers are copies of the demo-teacher-a entry
named demo-teacher-a, -b, ... (the registry holds three): the engine answers every model alike.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakes import ScriptedEngine, ScriptedPool  # noqa: E402


def instant_answer(request, adapter):
    """Answers every request at once: the student wrong, teachers right, reviewers with [4]."""
    text = request.messages[0][1]
    if text.startswith("You are reviewing"):
        return "Clear and correct. [4]"
    if "got it wrong" in text:
        return "Check step 2: 3 + 4 is 7, not 8."
    return "3 + 4 = 7. The answer is 7." if request.id.startswith("rationale:") else "The answer is 8."


def committee(teachers: int, folder: Path) -> tuple[str, ...]:
    """``teachers`` model entries demo-teacher-a, -b, ...: YAML files in ``folder``."""
    from mapd.local_teachers.registry import load_spec

    entry = yaml.safe_load(Path(load_spec("demo-teacher-a").source).read_text())
    paths = []
    for k in range(teachers):
        name = f"demo-teacher-{chr(ord('a') + k)}"
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({**entry, "name": name}))
        paths.append(str(folder / f"{name}.yaml"))
    return tuple(paths)


def one_size(n: int, teachers: int, shards: int) -> dict:
    from mapd.batch.config import RunConfig
    from mapd.batch.graph import Graph

    work = Path(tempfile.mkdtemp(prefix=f"mapd-scale-{n}-"))
    data = work / "train.jsonl"
    with open(data, "w") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"Question {i}: what is 3 + 4?", "answer": "3 + 4 = 7\n#### 7"}) + "\n")
    cfg = RunConfig(task="gsm8k", run_dir=work / "run", train_data=str(data), num_shards=shards,
                    teachers=committee(teachers, work))
    graph = Graph(cfg)
    engine = ScriptedEngine(instant_answer, keep_seen=False)   # peak memory is measured
    pool = ScriptedPool(engine)
    # The stand-in engine's own time (its answers, word counts, Completion objects) is timed
    # apart: what is left is the project's bookkeeping.
    generate, engine_seconds = engine.generate, [0.0]

    def timed_generate(requests, adapter=None):
        t0 = time.perf_counter()
        try:
            return generate(requests, adapter)
        finally:
            engine_seconds[0] += time.perf_counter() - t0
    engine.generate = timed_generate
    times = {}
    for label, stages in [("exam", [graph.one("exam")]), ("teach", graph.named("teach")), ("review", graph.named("review"))]:
        t0 = time.perf_counter()
        for stage in stages:
            stage.run(pool=pool)
        times[label] = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph.one("dataset").run()
    stats = graph.one("dataset").stats()
    times["dataset"] = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "times": times, "engine_s": engine_seconds[0], "peak_mb": peak_mb, "records": sum(stats["records"].values()),
            "generations": engine.usage.requests}


@click.command()
@click.option("--sizes", default="10000,100000", show_default=True)
@click.option("--teachers", default=5, show_default=True)
@click.option("--shards", default=4, show_default=True)
@click.option("--child", type=int, default=None, hidden=True)
def main(sizes, teachers, shards, child):
    if child is not None:
        print(json.dumps(one_size(child, teachers, shards)))
        return
    rows = []
    for n in [int(s) for s in sizes.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--teachers", str(teachers),
                              "--shards", str(shards)], capture_output=True, text=True, env={**os.environ})
        if out.returncode:
            sys.exit(out.stderr)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    stages = list(rows[0]["times"])
    for r in rows:
        r["total"] = sum(r["times"].values())
        r["ours"] = r["total"] - r["engine_s"]
    print(f"\nbookkeeping with an instant engine, {teachers} teachers, {shards} shards, {os.cpu_count()} CPUs")
    print("(stage columns: wall time with the stand-in engine; 'ours s' = total less its 'engine s')")
    print(f"{'questions':>10}{'generations':>13}" + "".join(f"{s + ' s':>11}" for s in stages)
          + f"{'total s':>10}{'engine s':>10}{'ours s':>9}{'peak MB':>10}{'us/gen':>9}")
    for r in rows:
        print(f"{r['n']:>10}{r['generations']:>13}" + "".join(f"{r['times'][s]:>11.1f}" for s in stages)
              + f"{r['total']:>10.1f}{r['engine_s']:>10.1f}{r['ours']:>9.1f}{r['peak_mb']:>10.0f}"
              + f"{1e6 * r['ours'] / r['generations']:>9.1f}")
    first, last = rows[0], rows[-1]
    growth = [last["times"][s] / first["times"][s] for s in stages]
    growth += [last[k] / first[k] for k in ("total", "engine_s", "ours", "peak_mb")]
    print("growth".rjust(10) + f"x{last['n'] / first['n']:.0f} linear".rjust(13)
          + "".join(f"x{g:.1f}".rjust(w) for g, w in zip(growth, [11] * len(stages) + [10, 10, 9, 10])))

if __name__ == "__main__":
    main()
