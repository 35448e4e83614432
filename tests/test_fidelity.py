"""Where the method follows the authors and where it is better than their code: unusable
completions never reach review or training, a wrong answer the grader only guessed is left to
the reviewers, the gold hint is the task's worked solution, the eval can sample as the authors
did, and the report says what differs from the paper's run. Scripted engines: bookkeeping."""
from dataclasses import replace

import polars as pl
import pytest

from mapd.batch.config import RunConfig
from mapd.batch.eval import Eval, results_table
from mapd.batch.graph import Graph
from mapd.batch.local import run_local
from mapd.batch.paper import paper_differences
from mapd.batch.stats import format_stats
from mapd.batch.summary import run_summary
from mapd.batch.tasks import get_task

from fakes import ScriptedEngine, ScriptedPool
from test_pipeline import _committee_scripts


def _distill(cfg, change=lambda scripts: None):
    """Run through the dataset with the committee scripts of test_pipeline, changed by ``change``."""
    graph = Graph(cfg)
    scripts = _committee_scripts({q.text: q.gold for q in graph.one("exam").questions})
    change(scripts)
    run_local(graph, ScriptedPool(scripts), through="dataset")
    dataset = graph.one("dataset")
    return graph, scripts, pl.read_parquet(dataset.decisions_path), pl.read_parquet(dataset.records_path)


def _cut_rationales_and_empty_feedback(scripts):
    """Teacher a's rationales stop at max_tokens; its feedback is blank."""
    answer = scripts["demo-teacher-a"].answer
    scripts["demo-teacher-a"] = ScriptedEngine(
        lambda r, adapter: "  \n" if r.id.startswith("feedback:") else answer(r, adapter),
        finish=lambda text: "length" if text.startswith("Solved") else "stop")


def test_cut_and_empty_completions_are_never_reviewed_nor_trained_on(tmp_path):
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=6, policy="paper", selection="all")
    graph, scripts, decisions, records = _distill(cfg, _cut_rationales_and_empty_feedback)
    reviews = pl.concat([r.results() for r in graph.named("review")])
    assert reviews.height == 6 * 2 * 2 and "demo-teacher-a" not in reviews["author"].to_list()
    mine = decisions.filter(pl.col("teacher") == "demo-teacher-a")
    assert set(zip(mine["kind"], mine["reason"])) == {("rationale", "unusable: cut at max_tokens"),
                                                       ("feedback", "unusable: empty")}
    assert not mine["accepted"].any() and "demo-teacher-a" not in records["teacher"].to_list()
    assert records.height == 6 + 6 * 2      # b's rationales (reviewed 4 and 4), b's and c's feedback
    stats = graph.one("dataset").stats()
    assert stats["unusable"] == {"demo-teacher-a": {"feedback": {"empty": 6}, "rationale": {"cut at max_tokens": 6}}}
    assert "unusable (never reviewed or trained on): demo-teacher-a 6 feedback empty, 6 rationale cut" in format_stats(stats)
    line = next(line for line in run_summary(graph) if line["stage"] == "dataset")
    assert (line["hit_max_tokens"], line["empty"]) == (6, 6) and "12 completions unusable" in line["note"]

    # --keep-cut: the cut rationales are reviewed (and, scored 5, accepted); the empty feedback is not.
    graph, _, decisions, records = _distill(replace(cfg, keep_cut=True), _cut_rationales_and_empty_feedback)
    reviews = pl.concat([r.results() for r in graph.named("review")])
    assert reviews.height == 6 * 3 * 2
    assert set(records.filter(pl.col("teacher") == "demo-teacher-a")["kind"]) == {"rationale"}


def test_a_wrong_answer_only_guessed_by_the_grader_is_left_to_the_reviewers(tmp_path):
    """Teacher b states no final answer: the last number is wrong, but read only by the fallback,
    so the answer check does not reject the rationale; the reviewers (4 and 4) accept it."""
    def unmarked(scripts):
        answer = scripts["demo-teacher-b"].answer
        scripts["demo-teacher-b"] = ScriptedEngine(
            lambda r, adapter: "Solved by teacher b: 123456 apples in all." if r.id.startswith("rationale:")
            else answer(r, adapter))

    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=6)
    graph, _, decisions, _ = _distill(cfg, unmarked)
    b = decisions.filter((pl.col("teacher") == "demo-teacher-b") & (pl.col("kind") == "rationale"))
    assert set(b["verdict"]) == {"wrong"} and set(b["how"]) == {"fallback"}
    assert b["accepted"].all() and set(b["reason"]) == {"accepted"}
    stats = graph.one("dataset").stats()
    assert stats["answer_uncheckable"] == {"rationales": 6, "accepted": 6}
    assert "answer uncheckable" in format_stats(stats)
    # The same wrong answer after a marker is rejected by the check (test_pipeline's teacher b).
    _, _, decisions, _ = _distill(replace(cfg, run_dir=tmp_path / "marked"))
    b = decisions.filter((pl.col("teacher") == "demo-teacher-b") & (pl.col("kind") == "rationale"))
    assert set(b["how"]) == {"marker"} and not b["accepted"].any()


def test_gold_hint_shows_the_worked_solution_to_feedback_writers_and_reviewers(tmp_path):
    gsm8k = get_task("gsm8k").load("train")[0]
    assert "####" not in gsm8k.solution and "<<" not in gsm8k.solution and gsm8k.gold in gsm8k.solution
    facts = get_task("strategyqa").load("train")[0].solution
    assert facts.startswith("Julius Caesar had three children.")

    def prompts(hint):
        cfg = RunConfig(task="gsm8k", run_dir=tmp_path / hint, limit=2, gold_hint=hint,
                        policy_overrides={"review_feedback": True})
        _, scripts, _, _ = _distill(cfg)
        seen = [r.messages[0][1] for r in scripts["demo-teacher-a"].seen]
        return ([p for p in seen if "Student's solution" in p],           # its feedback requests
                [p for p in seen if p.startswith("You are reviewing")])     # its reviews

    feedback, reviews = prompts("solution")
    assert len(feedback) == 2 and len(reviews) == 2 * 2 * 2
    first = get_task("gsm8k").load("train")[0]
    assert all("Reference solution:" in p for p in feedback + reviews)
    assert f"Reference solution:\n{first.solution}\n\nProblem: {first.text}" in feedback[0]
    feedback, reviews = prompts("answer")
    assert not any("Reference solution" in p for p in feedback + reviews)


def test_eval_sampled_as_the_authors_reports_mean_and_spread(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=4, eval_sampling="paper", eval_samples=3)
    gold = {q.id: q.gold for q in get_task("svamp").load("test")[:4]}
    # Right on the first of the three answers only: per-sample accuracies 1, 0, 0.
    engine = ScriptedEngine(lambda r, adapter: f"The answer is {-1 if '#' in r.id else gold[r.id]}.")
    base, distilled = Eval(cfg, "base"), Eval(cfg, "distilled", adapter)
    for stage in (base, distilled):
        stage.run(pool=ScriptedPool(engine))
    assert (base.spec.sampling.temperature, base.spec.sampling.top_p) == (0.3, 0.9)
    rows = base.results()
    assert rows.height == 12 and rows.group_by("question_id").len()["len"].to_list() == [3] * 4
    assert rows["seed"].n_unique() == 12
    greedy = Eval(replace(cfg, eval_sampling="greedy"), "base")
    assert greedy.spec.sampling.temperature == 0.0 and greedy.samples == 1
    summary = base.summary()
    assert summary["questions"] == 4 and summary["accuracy"] == pytest.approx(1 / 3)
    assert summary["accuracy_std"] == pytest.approx(0.57735, abs=1e-4)
    result = results_table(base, distilled)
    assert result["samples"] == 3
    assert "33.3% ± 57.7 (3 samples)" in (cfg.run_dir / "eval" / "results.md").read_text()


def test_the_report_names_every_difference_from_the_papers_run(tmp_path):
    cfg = RunConfig(task="logiqa", run_dir=tmp_path / "run")
    lines = dict(paper_differences(Graph(cfg)))
    assert list(lines) == ["split", "decoding", "fine-tuning", "teachers", "student", "committee"]
    assert "Eval.txt" in lines["split"] and lines["decoding"].startswith("greedy")
    assert "LoRA r=64 on a full-precision base" in lines["fine-tuning"] and "lr 1e-5" in lines["fine-tuning"]  # on a CPU
    qlora = dict(paper_differences(Graph(replace(cfg, train_overrides={"quantize": True}))))
    assert "LoRA r=64 on a 4-bit NF4 base (QLoRA)" in qlora["fine-tuning"]
    assert "Mixtral-8x7B-Instruct" in lines["teachers"] and "Llama2-7B-chat" in lines["student"]
    paper = dict(paper_differences(Graph(replace(cfg, policy="paper", eval_sampling="paper"))))
    assert paper["committee"].endswith("as the paper's") and paper["decoding"].startswith("sampled as the authors")
    assert "the paper's rule is" in lines["committee"]
