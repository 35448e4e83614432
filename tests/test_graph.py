"""The stage graph, the run's one configuration file, and the shape of the code: a stage's
identity holds what it read, so a rewritten upstream shard redoes exactly what read it; every
command reads config.yaml and refuses options that differ from it; imports run one way."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from mapd.batch.config import ConfigError, RunConfig
from mapd.batch.graph import Graph
from mapd.batch.local import run_local
from mapd.batch.shards import read_manifest, write_shard
from fakes import ScriptedEngine, ScriptedPool

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mapd", "slurm", "batch", "training", "local_teachers")   # from the top down
TEACHERS = ("tiny-a", "tiny-b", "tiny-c")


@pytest.fixture(scope="module")
def committee(tiny_spec_file, tmp_path_factory) -> tuple[str, ...]:
    folder = tmp_path_factory.mktemp("graph-registry")
    raw = yaml.safe_load(tiny_spec_file.read_text())
    for name in TEACHERS:
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({**raw, "name": name}))
    return tuple(str(folder / f"{name}.yaml") for name in TEACHERS)


def _cfg(run_dir, student, teachers, **changes):
    return RunConfig(task="svamp", run_dir=run_dir, limit=4, num_shards=2, student=str(student), teachers=teachers,
                     policy="paper", selection="all",
                     train_overrides={"epochs": 1, "batch_size": 4, "lora_r": 8}, **changes)


def _answer(request, adapter):
    """Every model: a final answer and a score, so every rationale is accepted."""
    return f"For {request.id}: the answer is 7. Score: [4]"


def test_every_stage_is_a_node_with_the_stages_it_reads(tmp_path, tiny_spec_file, committee):
    graph = Graph(_cfg(tmp_path, tiny_spec_file, committee))
    keys = [s.key for s in graph]
    assert keys == ["exam", "teach/tiny-a", "teach/tiny-b", "teach/tiny-c", "review/tiny-a", "review/tiny-b",
                    "review/tiny-c", "dataset", "train", "eval/base", "eval/distilled"]
    needs = {s.key: [u.key for u in s.needs] for s in graph}
    assert needs["teach/tiny-b"] == ["exam"] and needs["review/tiny-b"] == ["exam", "teach/tiny-a", "teach/tiny-c"]
    assert needs["dataset"] == keys[:7] and needs["train"] == ["dataset"] and needs["eval/distilled"] == ["train"]
    assert needs["eval/base"] == []
    # Before anything ran, every stage says why it will run; the distilled eval is a node too.
    plan = dict(graph.plan())
    assert plan["teach/tiny-a"] == "2/2 shards waits for exam shard 0 (not written yet)" or \
        plan["teach/tiny-a"].startswith("1/2 shards waits for exam shard 0")
    assert plan["eval/distilled"].startswith("2/2 shards waits for train (waits for dataset")
    with pytest.raises(KeyError, match="no stage 'review/nobody'"):
        graph["review/nobody"]


def test_a_rewritten_teach_shard_redoes_exactly_what_read_it(tmp_path, tiny_spec_file, committee):
    """On GPUs generation is not bit-exact from run to run: a redone teach shard may hold other
    texts than the ones reviewed. Its checksum is in the identity of every shard that read it."""
    cfg = _cfg(tmp_path / "run", tiny_spec_file, committee)
    engine = ScriptedEngine(_answer)
    run_local(Graph(cfg), ScriptedPool(engine))            # real QLoRA on the tiny student
    assert all(reason is None for _, reason in Graph(cfg).plan())

    # Teacher a's shard 0 rewritten, with a valid manifest: it is itself done and current.
    shard = Graph(cfg)["teach/tiny-a"].path(0)
    manifest = read_manifest(shard)
    frame = pl.read_parquet(shard).with_columns(pl.col("completion") + " Rewritten.")
    write_shard(frame, shard, manifest["identity"], **{k: manifest[k] for k in ("stage", "shard", "num_shards",
                                                                                 "model", "figures")})
    plan = dict(Graph(cfg).plan())
    redo = {key for key, reason in plan.items() if reason}
    assert redo == {"review/tiny-b", "review/tiny-c", "dataset", "train", "eval/distilled"}, plan
    assert plan["review/tiny-b"].startswith("1/2 shards written by another configuration (input(s) rewritten "
                                            "since: teach/tiny-a/shard-00000-of-00002.parquet")
    assert plan["train"].startswith("waits for dataset (waits for review/tiny-b shard 0 (written by another")
    assert plan["eval/distilled"].startswith("2/2 shards waits for train")

    figures = {f["stage"]: f["shards_run"] for f in run_local(Graph(cfg), ScriptedPool(engine))}
    assert figures == {"exam": 0, "teach/tiny-a": 0, "teach/tiny-b": 0, "teach/tiny-c": 0, "review/tiny-a": 0,
                       "review/tiny-b": 1, "review/tiny-c": 1, "dataset": 1, "train": 1, "eval/base": 0,
                       "eval/distilled": 2}
    records = pl.read_parquet(Graph(cfg)["dataset"].records_path)
    assert records.filter(pl.col("teacher") == "tiny-a")["response"].str.ends_with(" Rewritten.").sum() > 0


def _mapd(*args):
    from mapd.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_every_command_reads_the_saved_configuration_and_refuses_other_options(tmp_path, tiny_spec_file, committee):
    run = tmp_path / "run"
    # plan and report never write the configuration.
    assert _mapd("plan", "--task", "svamp", "--run-dir", run, "--limit", 4).exit_code == 0
    assert not (run / "config.yaml").exists()
    cfg = _cfg(run, tiny_spec_file, committee)
    cfg.save()
    saved = (run / "config.yaml").read_text()

    done = _mapd("plan", "--run-dir", run)
    assert done.exit_code == 0 and "review/tiny-c: to do" in done.output
    refused = _mapd("plan", "--run-dir", run, "--limit", 8, "--seed", 1, "--threshold", 4)
    assert refused.exit_code == 1, refused.output
    for difference in ("limit: 4 -> 8", "seed: 731 -> 1", "policy_overrides: {} -> {'threshold': 4.0}",
                       str(run / "config.yaml"), "--reconfigure"):
        assert difference in refused.output
    same = _mapd("plan", "--run-dir", run, "--limit", 4, "--task", "svamp")
    assert same.exit_code == 0, same.output
    again = _mapd("plan", "--run-dir", run, "--limit", 8, "--reconfigure")
    assert again.exit_code == 0 and (run / "config.yaml").read_text() == saved
    status = _mapd("status", "--run-dir", run)
    assert status.exit_code == 0 and "no SLURM job of this configuration" in status.output
    assert re.search(r"exam\s+shards 0/2 done", status.output)
    report = _mapd("report", "--run-dir", run)
    assert report.exit_code == 0 and (run / "config.yaml").read_text() == saved
    assert _mapd("plan").exit_code == 2           # no run named


@pytest.mark.parametrize("change, message", [
    ({"limits": 3}, "unknown key(s) ['limits']"),
    ({"limit": "3"}, "key 'limit': expected an integer or null, got '3'"),
    ({"feedback": 1}, "key 'feedback': expected true or false, got 1"),
    ({"teachers": "a,b"}, "key 'teachers': expected a list of names, got 'a,b'"),
    ({"task": "mmlu"}, "key 'task': unknown task 'mmlu'"),
    ({"policy_overrides": {"treshold": 4}}, "key 'policy_overrides': unknown"),
    ({"train_overrides": {"lora": 4}}, "key 'train_overrides': unknown field(s) ['lora']"),
    ({"num_shards": 0}, "key 'num_shards': must be at least 1"),
])
def test_a_bad_configuration_file_names_the_file_and_the_key(tmp_path, change, message):
    RunConfig(task="svamp", run_dir=tmp_path).save()
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**raw, **change}))
    with pytest.raises(ConfigError) as err:
        RunConfig.load(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'config.yaml'}: ") and message in str(err.value), str(err.value)


# ---------------------------------------------------------------- the shape of the code

def _modules() -> dict[str, Path]:
    """Every module of the project by its import name: batch/stage.py is mapd.batch.stage."""
    out = {}
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts if folder == "mapd" else ("mapd", *parts)).removesuffix(".__init__")
            out[name] = path
    return out


def _layer(module: str) -> int:
    """mapd.cli on top, then slurm, batch, training, local_teachers."""
    parts = module.split(".")
    return PACKAGES.index(parts[1]) if len(parts) > 1 and parts[1] in PACKAGES else 0


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``module`` imports, at its top or inside a function."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found - {module}


def test_imports_run_one_way_and_no_file_is_too_long():
    modules = _modules()
    assert {"mapd.cli", "mapd.batch.graph", "mapd.slurm.submit", "mapd.training.loop"} <= set(modules)
    graph = {m: _imports(m, p, set(modules)) for m, p in modules.items()}
    upward = [f"{m} -> {n}" for m, deps in graph.items() for n in deps if _layer(n) < _layer(m)]
    assert not upward, upward

    # No circle: a depth-first search finds no module on its own path.
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if n.startswith(m + "."):
                continue                  # a package's __init__ importing its own modules
            assert state.get(n) != 1, " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    long = {str(p.relative_to(ROOT)): n for p in modules.values() if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long


def test_the_project_cites_nothing_outside_itself():
    tracked = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".txt", ".yaml", ".sbatch", ".cfg")
               and not {".venv", ".git", "runs", "data"} & set(p.relative_to(ROOT).parts)]
    citing = [str(p.relative_to(ROOT)) for p in tracked
              if re.search(r"DESIGN\.md|\.\./shared", p.read_text(errors="replace")) and p.name != "test_graph.py"]
    assert not citing, citing



def test_a_new_run_takes_one_shard_per_500_questions_unless_told(tmp_path):
    from mapd.batch.options import resolve

    # GSM8K: 7,473 train questions; SVAMP: 700; the embedded run (make distill): 16 and 16 test questions;
    # --limit 16 alone: the eval's 1,319.
    assert resolve(tmp_path / "a", {"task": "gsm8k"}, False).num_shards == 15
    assert resolve(tmp_path / "b", {"task": "svamp"}, False).num_shards == 2
    assert resolve(tmp_path / "c", {"task": "gsm8k", "limit": 16, "test_limit": 16}, False).num_shards == 1
    assert resolve(tmp_path / "c2", {"task": "gsm8k", "limit": 16}, False).num_shards == 3
    assert resolve(tmp_path / "d", {"task": "gsm8k", "num_shards": 4}, False).num_shards == 4
    # A saved run keeps its own count.
    resolve(tmp_path / "e", {"task": "gsm8k", "limit": 16, "test_limit": 16}, False).save()
    assert resolve(tmp_path / "e", {}, False).num_shards == 1
