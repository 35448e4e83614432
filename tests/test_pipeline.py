"""exam -> teach -> review -> dataset: bookkeeping with scripted engines (each model answers by
a script), one engine load per shared-weights committee, and the real demo committee on vLLM."""
import hashlib
import re
import shutil
from dataclasses import replace

import polars as pl
import pytest
import yaml

from mapd.batch.config import RunConfig
from mapd.batch.graph import Graph
from mapd.batch.local import run_local
from mapd.batch.stats import format_stats
from mapd.local_teachers.pool import EnginePool

from fakes import ScriptedEngine, ScriptedPool

GOLD = re.compile(r"correct (?:final )?answer is (\S+?)\.?\s")


def _committee_scripts(gold_of):
    """Student always wrong. Teacher a: right answers, scored 5 by all. Teacher b: wrong final
    answers that reviewers still like (4): the answer check's case. Teacher c: right answers
    that reviewers score 2 or leave unscored."""
    def student(request, adapter):
        return "I think the answer is 999999."

    def teacher(name):
        def answer(request, adapter):
            text = request.messages[0][1]
            if "Reviewing" in text or "You are reviewing" in text:
                author_solution = text.split("under review:")[1]
                if "by teacher a" in author_solution:
                    return "Every step is right. Score: [5]"
                if "by teacher b" in author_solution:
                    return "Nicely explained, though 2 steps are terse. [4]"
                return "Unclear; I cannot tell." if name == "demo-teacher-a" else "Weak. [2]"
            if "wrong" in text and "Student's" in text:
                return f"Feedback by {name}: check the subtraction in step 2."
            q = text.split("Problem: ", 1)[1].strip()
            final = gold_of[q] if name != "demo-teacher-b" else "123456"
            return f"Solved by teacher {name[-1]}. The answer is {final}."
        return answer

    return {"smollm2-135m-instruct": ScriptedEngine(student),
            **{f"demo-teacher-{k}": ScriptedEngine(teacher(f"demo-teacher-{k}")) for k in "abc"}}


@pytest.fixture
def cfg(tmp_path):
    return RunConfig(task="svamp", run_dir=tmp_path / "run", limit=6, num_shards=2)


def _run(cfg):
    graph = Graph(cfg)
    gold_of = {q.text: q.gold for q in graph.one("exam").questions}
    pool = ScriptedPool(_committee_scripts(gold_of))
    figures = run_local(graph, pool, through="dataset")
    stats = graph.one("dataset").stats()
    return graph, pool, figures, stats


def test_committee_writes_reviews_decisions_and_paper_selection(cfg):
    graph, pool, figures, stats = _run(cfg)
    scripts = pool.engines
    # Every mistake (all 6) gets a rationale and feedback from each of the 3 teachers.
    for k in "abc":
        teach = scripts[f"demo-teacher-{k}"].seen
        assert sum(r.id.startswith("rationale:") for r in teach) == 6
        assert sum(r.id.startswith("feedback:") for r in teach) == 6
    # Reviews: each rationale by the 2 other teachers, never by its author.
    reviews = pl.concat([r.results() for r in graph.named("review")])
    assert reviews.height == 6 * 3 * 2 and (reviews["author"] != reviews["reviewer"]).all()
    assert (reviews.group_by("question_id", "author").len()["len"] == 2).all()
    assert set(reviews["kind"]) == {"rationale"}      # feedback is not peer-reviewed by default
    decisions = pl.read_parquet(graph.one("dataset").decisions_path)
    rationales = decisions.filter(pl.col("kind") == "rationale")
    by_teacher = dict(rationales.group_by("teacher").agg(pl.col("accepted").sum()).iter_rows())
    assert by_teacher == {"demo-teacher-a": 6, "demo-teacher-b": 0, "demo-teacher-c": 0}
    assert set(rationales.filter(pl.col("teacher") == "demo-teacher-b")["reason"].str.slice(0, 18)) == {"answer check faile"}
    assert rationales.filter(pl.col("teacher") == "demo-teacher-a")["mean_score"].to_list() == [5.0] * 6
    # Paper selection: one rationale and one feedback per kept question.
    records = pl.read_parquet(graph.one("dataset").records_path)
    assert records.height == 12 and records["question_id"].n_unique() == 6
    assert sorted(records["kind"].value_counts()["count"].to_list()) == [6, 6]
    r = records.filter(pl.col("kind") == "rationale").row(0, named=True)
    assert r["teacher"] == "demo-teacher-a" and r["scores"] == [5, 5]
    assert r["reviewers"] == ["demo-teacher-b", "demo-teacher-c"]
    assert r["prompt"].startswith("Solve the following math word problem") and "The answer is" in r["response"]
    f = records.filter(pl.col("kind") == "feedback").row(0, named=True)
    assert "I think the answer is 999999." in f["prompt"] and f["response"].startswith("Feedback by")
    # Statistics.
    assert stats["questions_by_accepted_rationales"] == {"0": 0, "1": 6, "2": 0, "3": 0}
    assert stats["passed_review_but_wrong_answer"] == 6
    assert stats["parse_failures_per_reviewer"]["demo-teacher-a"] == {"reviews": 12, "no_score": 6, "out_of_range": 0}
    matrix = {(m["reviewer"], m["author"]): m["mean_score"] for m in stats["review_matrix"]}
    assert matrix[("demo-teacher-b", "demo-teacher-a")] == 5.0 and matrix[("demo-teacher-a", "demo-teacher-b")] == 4.0
    assert matrix[("demo-teacher-a", "demo-teacher-c")] is None and matrix[("demo-teacher-b", "demo-teacher-c")] == 2.0
    text = format_stats(stats)
    assert "6 questions kept" in text and "reviewer x author" in text


def test_paper_policy_keeps_well_reviewed_rationales_with_wrong_answers(cfg):
    graph, _, _, stats = _run(replace(cfg, policy="paper", selection="all"))
    decisions = pl.read_parquet(graph.one("dataset").decisions_path).filter(pl.col("kind") == "rationale")
    accepted = dict(decisions.group_by("teacher").agg(pl.col("accepted").sum()).iter_rows())
    # b: mean(4, 4) = 4 > 3 accepted without the answer check; c: only [2] valid -> rejected.
    assert accepted == {"demo-teacher-a": 6, "demo-teacher-b": 6, "demo-teacher-c": 0}
    records = pl.read_parquet(graph.one("dataset").records_path)
    assert (records["kind"] == "rationale").sum() == 12 and (records["kind"] == "feedback").sum() == 18


def test_rerun_does_nothing_and_a_teacher_change_redoes_only_downstream(cfg, caplog):
    _run(cfg)
    _, pool, figures, _ = _run(cfg)
    assert all(f["shards_run"] == 0 for f in figures)
    assert not any(s.seen for s in pool.engines.values())
    # A changed review setting (feedback reviewed too) redoes review and dataset, not exam or teach.
    changed = replace(cfg, policy_overrides=(("review_feedback", True),))
    with caplog.at_level("INFO"):
        graph, pool, figures, _ = _run(changed)
    ran = {f["stage"]: f["shards_run"] for f in figures}
    assert ran["exam"] == 0
    assert all(ran[f"teach/demo-teacher-{k}"] == 0 for k in "abc")
    assert all(ran[f"review/demo-teacher-{k}"] == 2 for k in "abc")
    assert "dataset: to do (written by another configuration" in caplog.text
    reviews = pl.concat([r.results() for r in graph.named("review")])
    assert set(reviews["kind"]) == {"rationale", "feedback"}


def test_single_teacher_and_no_feedback_ablations(cfg):
    graph, pool, _, stats = _run(replace(cfg, teachers=("demo-teacher-a",), feedback=False))
    assert graph.named("review") == [] and "review_matrix" not in stats
    assert all(r.id.startswith("rationale:") for r in pool.engines["demo-teacher-a"].seen)
    records = pl.read_parquet(graph.one("dataset").records_path)
    assert set(records["kind"]) == {"rationale"} and records.height == 6
    assert records["scores"].to_list() == [[]] * 6


def test_no_accepted_rationale_leaves_an_empty_dataset_with_a_clear_count(cfg):
    graph, _, _, stats = _run(replace(cfg, policy_overrides=(("threshold", 5.0),)))
    assert stats["rationales_accepted"] == 0 and stats["questions_kept"] == 0
    assert pl.read_parquet(graph.one("dataset").records_path).height == 0


def test_committee_sharing_weights_is_loaded_once(tiny_spec_file, tmp_path):
    spec = yaml.safe_load(tiny_spec_file.read_text())
    paths = []
    for name, temp in [("tiny-a", 0.8), ("tiny-b", 1.0)]:
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump({**spec, "name": name, "sampling": {**spec["sampling"], "temperature": temp}}))
        paths.append(str(p))
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=3, student=str(tiny_spec_file),
                    teachers=tuple(paths))
    pool = EnginePool()
    graph = Graph(cfg)
    run_local(graph, pool, through="dataset")
    assert pool.loads == 1
    graph.one("dataset").run()
    records = pl.read_parquet(graph.one("dataset").records_path)
    assert set(records.columns) >= {"record_id", "question_id", "kind", "prompt", "response", "teacher"}


@pytest.mark.slow
def test_real_committee_on_vllm(tmp_path, vllm_engine):
    """The embedded default as `make distill` runs it, smaller: the real SmolLM2 as student and
    as a two-member demo committee, on real vLLM, sampled, two shards."""
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=4, num_shards=2,
                    teachers=("demo-teacher-a", "demo-teacher-b"))
    pool = EnginePool()
    pool.engine = vllm_engine          # the session's engine: same weights as every member
    graph = Graph(cfg)
    assert graph.one("exam").spec.sampling.temperature == 0.3
    figures = run_local(graph, pool, through="dataset")
    assert pool.loads == 0 and all(f["shards_run"] == stage.num_shards for stage, f in zip(graph, figures))
    # What each call did is also kept in the manifests, whichever job wrote the shards.
    for stage, done in zip(graph, figures):
        if stage.name == "dataset":
            break
        recorded = stage.figures()
        assert recorded["generations"] == done["generations"] > 0
        assert recorded["completion_tokens"] == done["completion_tokens"] > 0
        assert 0 < recorded["engine_seconds"] <= recorded["wall_seconds"] <= done["wall_seconds"]
    exam = graph.one("exam").results()
    assert exam.height == 4 and set(exam["verdict"]) <= {"correct", "wrong", "unparseable"}
    assert (exam["completion_tokens"] > 0).all()
    assert exam.filter(pl.col("verdict") != "unparseable")["answer"].null_count() == 0
    mistakes = exam.filter(pl.col("verdict") != "correct").height
    teach = pl.concat([t.results() for t in graph.named("teach")])
    assert teach.height == mistakes * 2 * 2 and (teach["completion_tokens"] > 0).all()
    assert teach.filter(pl.col("kind") == "feedback")["prompt"].str.contains("correct final answer is").all()
    reviews = pl.concat([r.results() for r in graph.named("review")])
    assert reviews.height == mistakes * 2 and (reviews["author"] != reviews["reviewer"]).all()
    ok = reviews.filter(pl.col("score_status") == "ok")["score"]
    assert ok.is_between(1, 5).all() and reviews.filter(pl.col("score_status") != "ok")["score"].null_count() == \
        reviews.filter(pl.col("score_status") != "ok").height
    stats = graph.one("dataset").stats()
    decisions = pl.read_parquet(graph.one("dataset").decisions_path)
    assert decisions.height == teach.height and stats["rationales"] == mistakes * 2
    records = pl.read_parquet(graph.one("dataset").records_path)
    accepted = decisions.filter(pl.col("accepted") & (pl.col("kind") == "rationale"))
    assert records.filter(pl.col("kind") == "rationale").height == accepted["question_id"].n_unique()
    assert sum(stats["questions_by_accepted_rationales"].values()) == mistakes


@pytest.mark.slow
def test_distill_runs_every_stage_to_the_results_table_and_retrains_on_new_records(tmp_path, tiny_spec_file):
    """`mapd distill` through train and eval on the tiny model (real 4-bit QLoRA, real peft)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    teacher = tmp_path / "tiny-teacher.yaml"
    teacher.write_text(tiny_spec_file.read_text().replace("name: tiny-llama", "name: tiny-teacher"))
    run = tmp_path / "run"
    args = [str(Path(sys.executable).parent / "mapd"), "distill", "--task", "svamp", "--limit", "4", "--test-limit", "4",
            "--run-dir", str(run), "--student", str(tiny_spec_file), "--teachers", str(teacher),
            "--no-answer-check", "--epochs", "1", "--batch-size", "2", "--lora-r", "8",
            "--keep-cut"]   # the tiny random model always writes up to max_tokens
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "| svamp | tiny-llama |" in first.stdout and "records: 4 rationale, 4 feedback" in first.stdout
    summary = {line["stage"]: line for line in json.loads((run / "summary.json").read_text())}
    assert list(summary) == ["exam", "teach/tiny-teacher", "dataset", "train", "eval/base",
                             "eval/distilled"]
    assert "| eval/distilled | 4 |" in first.stdout
    result = json.loads((run / "eval" / "results.json").read_text())
    assert result["test_size"] == 4 and result["adapter"] == str(run / "train" / "adapter")
    card = json.loads((run / "train" / "adapter" / "card.json").read_text())
    assert card["counts"]["per_kind"] == {"feedback": 4, "rationale": 4}
    assert card["dataset"]["sha256"] and card["config"]["lora_r"] == 8

    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "not written yet" not in again.stderr and "train: done, skipped" in again.stderr

    # The saved configuration is kept: another setting needs --reconfigure.
    refused = subprocess.run(args + ["--no-feedback"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and "feedback: True -> False" in refused.stderr
    # Without feedback the teachers' work, the records and so the adapter and its eval change.
    third = subprocess.run(args + ["--no-feedback", "--reconfigure"], capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr
    assert "trained on other records: starting again" in third.stderr
    assert "eval/base shard 0/1: done, skipped" in third.stderr
    assert "eval/distilled shard 0/1: written by another configuration (adapter_" in third.stderr
    assert "records: 4 rationale, 0 feedback" in third.stdout

    # A second round: the trained student retakes the exam with its adapter and training goes on
    # from it; round 1 is not redone and the base student is evaluated once.
    adapter = run / "train" / "adapter"
    stamp = (adapter / "adapter_model.safetensors").stat().st_mtime_ns
    fourth = subprocess.run(args + ["--no-feedback", "--rounds", "2"], capture_output=True, text=True, timeout=600)
    assert fourth.returncode == 0, fourth.stderr
    assert (adapter / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    later = run / "round-2"
    exam_manifest = json.loads((later / "exam" / "shard-00000-of-00001.manifest.json").read_text())
    adapter_sha = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert exam_manifest["identity"]["adapter_sha256"] == adapter_sha
    assert exam_manifest["identity"]["adapter_applied"] == "merged"      # round 1's eval copy, on CPU
    card = json.loads((later / "train" / "adapter" / "card.json").read_text())
    assert card["config"]["init_adapter"] == str(adapter)
    assert not (later / "eval" / "base").exists()
    rows = [line for line in fourth.stdout.splitlines() if line.startswith("| svamp | tiny-llama |")]
    assert [line.split("|")[3].strip() for line in rows[-2:]] == ["1", "2"]
    assert json.loads((later / "eval" / "results.json").read_text())["round"] == 2


def test_run_summary_counts_empty_garbage_and_unscored_output_and_loses_no_row(cfg):
    """A student that answers nothing or garbage (with undecodable bytes shown as U+FFFD) and a
    teacher that writes nothing: every row is kept, and the summary counts each kind of loss."""
    from mapd.batch.summary import run_summary, write_summary

    graph = Graph(cfg)
    gold_of = {q.text: q.gold for q in graph.one("exam").questions}
    scripts = _committee_scripts(gold_of)
    answers = iter(["", "\ufffd\ufffd@@ \x00", "The answer is 999999.", "", "###", "The answer is 1."] * 2)
    scripts["smollm2-135m-instruct"] = ScriptedEngine(lambda request, adapter: next(answers))
    scripts["demo-teacher-c"] = ScriptedEngine(lambda request, adapter: "")
    run_local(graph, ScriptedPool(scripts), through="dataset")
    lines = {line["stage"]: line for line in run_summary(graph)}
    exam = graph.one("exam").results()
    assert exam.height == 6 and "\ufffd\ufffd@@ \x00" in exam["completion"].to_list()
    assert lines["exam"] | {"note": ""} == {
        "stage": "exam", "rows": 6, "prompt_too_long": 0, "hit_max_tokens": 0, "empty": 2,
        "parse_failures": int((exam["verdict"] == "unparseable").sum()), "note": ""}
    mistakes = exam.filter(pl.col("verdict") != "correct").height
    assert lines["teach/demo-teacher-c"]["empty"] == lines["teach/demo-teacher-c"]["rows"] == 2 * mistakes
    assert lines["teach/demo-teacher-c"]["parse_failures"] == mistakes          # its rationales hold no answer
    assert lines["review/demo-teacher-c"]["parse_failures"] == lines["review/demo-teacher-c"]["rows"] == 2 * mistakes
    decisions = pl.read_parquet(graph.one("dataset").decisions_path)
    assert decisions.height == sum(lines[f"teach/demo-teacher-{k}"]["rows"] for k in "abc") == 6 * mistakes
    assert "mistaken questions dropped" in lines["dataset"]["note"] and "train" not in lines
    text = write_summary(graph)
    assert (cfg.run_dir / "summary.md").read_text() == text and "| teach/demo-teacher-c | " in text


def test_a_change_redoes_exactly_the_stages_downstream_and_says_why(cfg, tmp_path, monkeypatch):
    """A policy, a teacher's model, a review prompt or the seed: the plan names the stages
    that will run again and why, and keeps every other one."""
    from mapd.batch.graph import format_plan
    from mapd.batch.prompts import load_prompt, prompts_dir
    from mapd.local_teachers.registry import load_spec

    _run(cfg)

    def todo(changed):
        plan = dict(Graph(changed).plan())
        return {label for label, reason in plan.items() if reason}, plan

    later = {"train", "eval/distilled"}           # never trained in these tests
    redo, plan = todo(cfg)
    assert redo == later | {"eval/base"}
    redo, plan = todo(replace(cfg, policy_overrides=(("threshold", 4.0),)))
    assert redo == later | {"eval/base", "dataset"} and "threshold" in plan["dataset"]

    spec = yaml.safe_load(open(load_spec("demo-teacher-b").source))
    other = tmp_path / "other-model"          # another content (its config alone, no weights), not just a path
    other.mkdir()
    shutil.copy(f"{load_spec('demo-teacher-b').path}/config.json", other)
    spec["path"] = str(other)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(spec))
    redo, plan = todo(replace(cfg, teachers=("demo-teacher-a", str(tmp_path / "b.yaml"), "demo-teacher-c")))
    reviews = {f"review/demo-teacher-{k}" for k in "abc"}
    assert redo == later | {"eval/base", "dataset", "teach/demo-teacher-b"} | reviews
    assert plan["teach/demo-teacher-b"].startswith("2/2 shards written by another configuration (model_identity")

    prompts = tmp_path / "prompts"
    shutil.copytree(prompts_dir(), prompts)
    (prompts / "peer_review" / "math.txt").write_text((prompts / "peer_review" / "math.txt").read_text() + "\nBe strict.")
    monkeypatch.setenv("MAPD_PROMPTS", str(prompts))
    load_prompt.cache_clear()
    try:
        redo, plan = todo(cfg)
    finally:
        monkeypatch.undo()
        load_prompt.cache_clear()
    assert redo == later | {"eval/base", "dataset"} | reviews and "prompts_sha256" in plan["review/demo-teacher-a"]

    redo, plan = todo(replace(cfg, seed=1))
    assert redo == set(plan) and "seed: 731 -> 1" in plan["exam"]
    assert "exam: to do, 2/2 shards written by another configuration" in format_plan(plan.items())


def test_a_stage_refuses_missing_inputs_before_loading_its_model(cfg):
    from mapd.batch.shards import StaleShardError

    class NoLoading:
        def get(self, spec):
            raise AssertionError(f"{spec.name} was loaded")

    graph = Graph(cfg)
    with pytest.raises(StaleShardError, match=r"waits for exam shard 0 \(not written yet\); run that stage first"):
        graph.named("teach")[0].run(pool=NoLoading())
    with pytest.raises(StaleShardError, match=r"waits for exam shard 0 \(not written yet\); run that stage first"):
        graph.named("review")[0].run(pool=NoLoading())
