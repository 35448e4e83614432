"""mapd import and mapd export: a committee file becomes the exam, teach and review shards the
stages would write (graded, scored, with an identity naming the file's checksum), bad input is
one line naming the file, the line and the field, and a run's committee outputs exported and
imported again give the same records."""
from __future__ import annotations

import json
import re
from dataclasses import replace

import polars as pl
import pytest
from click.testing import CliRunner

from mapd.batch.config import RunConfig
from mapd.batch.graph import Graph
from mapd.batch.local import run_local
from mapd.batch.shards import file_sha256, read_manifest
from mapd.batch.tasks import get_task
from fakes import ScriptedEngine, ScriptedPool

QUESTIONS = get_task("svamp").load("train")[:3]
TEACHERS = ("alpha", "beta", "gamma")


def _mapd(*args):
    from mapd.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _line(q, **changes) -> dict:
    """Everyone reviews everyone else with a 4; beta's final answer is wrong."""
    line = {"question_id": q.id, "question": q.text, "gold": q.gold, "student_answer": "I think the answer is 1.",
            "teachers": {t: {"rationale": f"{t} works it out. The answer is {2 if t == 'beta' else q.gold}.",
                             "feedback": f"{t}: check step 2."} for t in TEACHERS},
            "reviews": [{"reviewer": r, "author": a, "score": 4} for a in TEACHERS for r in TEACHERS if r != a]}
    return {**line, **changes}


def _write(path, lines) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def _import(file, run, *options):
    return _mapd("import", "--task", "svamp", "--limit", 4, "--run-dir", run, *options, file)


@pytest.fixture
def committee(tmp_path):
    """Three questions. On the first, gamma's rationale was cut at max_tokens (so nobody reviews
    it: the file's reviews of it are left unused), alpha scored beta's 6 and gamma wrote a review."""
    first = _line(QUESTIONS[0])
    first["teachers"]["gamma"]["rationale"] = {"text": "gamma starts: 87 + ...", "finish_reason": "length"}
    for review in first["reviews"]:
        if review["author"] == "beta":
            review.pop("score")
            review["review" if review["reviewer"] == "gamma" else "score"] = \
                "Clear, but the sum is off.\n[5]" if review["reviewer"] == "gamma" else 6
    path = tmp_path / "committee.jsonl"
    _write(path, [first, *(_line(q) for q in QUESTIONS[1:])])
    return path


def test_an_imported_file_becomes_the_shards_the_stages_would_write(tmp_path, committee):
    run = tmp_path / "run"
    result = _import(committee, run)
    assert result.exit_code == 0, result.output
    assert "left unused: 2 reviews of completions this run does not review" in result.output
    graph = Graph(RunConfig.load(run))
    assert graph.cfg.teachers == TEACHERS and graph.cfg.imported["sha256"] == file_sha256(committee)
    assert [key for key, reason in graph.plan() if reason is None] == [s.key for s in graph][:7]
    for stage in graph.stages[:7]:
        frame = pl.read_parquet(stage.path(0))
        assert dict(frame.schema) == stage.schema, stage.key
        assert read_manifest(stage.path(0))["identity"]["model_identity"] == \
            f"imported file {file_sha256(committee)[:16]}"
    exam = graph.one("exam").results()
    assert exam["question_id"].to_list() == [q.id for q in QUESTIONS] and set(exam["verdict"]) == {"wrong"}
    # Rationales graded by the task's grader, as the teach stage grades them.
    teach = pl.concat([t.results() for t in graph.named("teach")]).filter(pl.col("kind") == "rationale")
    verdicts = {(r["teacher"], r["question_id"]): (r["verdict"], r["how"]) for r in teach.iter_rows(named=True)}
    assert verdicts["alpha", QUESTIONS[0].id] == ("correct", "marker")
    assert verdicts["beta", QUESTIONS[1].id] == ("wrong", "marker")
    # A bare score is taken as given (6 is out of range); a review's text goes through the score parser.
    reviews = pl.concat([r.results() for r in graph.named("review")])
    first = reviews.filter(pl.col("question_id") == QUESTIONS[0].id, pl.col("author") == "beta")
    assert sorted(first.select("reviewer", "score", "score_status").rows()) == [
        ("alpha", None, "out_of_range"), ("gamma", 5, "ok")]
    assert reviews.filter(pl.col("question_id") == QUESTIONS[0].id, pl.col("author") == "gamma").is_empty()

    graph.one("dataset").run()
    decisions = pl.read_parquet(graph.one("dataset").decisions_path)
    reasons = {(r["teacher"], r["question_id"]): r["reason"] for r in decisions.filter(pl.col("kind") == "rationale")
               .iter_rows(named=True)}
    assert reasons["gamma", QUESTIONS[0].id] == "unusable: cut at max_tokens"
    assert reasons["alpha", QUESTIONS[1].id] == "accepted"
    assert reasons["beta", QUESTIONS[1].id].startswith("answer check failed (answer 2 != gold")
    records = pl.read_parquet(graph.one("dataset").records_path)
    assert records.height == 6 and sorted(set(records["kind"])) == ["feedback", "rationale"]


def test_a_changed_file_redoes_what_read_what_changed(tmp_path, committee):
    run = tmp_path / "run"
    assert _import(committee, run).exit_code == 0
    Graph(RunConfig.load(run)).one("dataset").run()
    teach_sha = read_manifest(Graph(RunConfig.load(run))["teach/alpha"].path(0))["sha256"]

    # The file changes, and is not imported again: a stage that has to read it refuses.
    lines = [json.loads(line) for line in committee.read_text().splitlines()]
    lines[1]["reviews"][0]["score"] = 2                     # beta's review of alpha's rationale
    _write(committee, lines)
    (run / "teach" / "beta" / "shard-00000-of-00001.manifest.json").unlink()
    refused = _mapd("teach", "--run-dir", run)
    assert refused.exit_code == 1 and f"{committee}: changed since it was imported" in refused.output

    again = _import(committee, run)
    assert again.exit_code == 0, again.output
    graph = Graph(RunConfig.load(run))
    plan = dict(graph.plan())
    # Every imported shard is written again (no generation: seconds); only the review shard that
    # changed is a new input to the dataset.
    assert all(plan[s.key] is None for s in graph.stages[:7])
    assert read_manifest(graph["teach/alpha"].path(0))["sha256"] == teach_sha
    assert plan["dataset"] == ("written by another configuration (input(s) rewritten since: "
                               "review/beta/shard-00000-of-00001.parquet)")


LINE = _line(QUESTIONS[0])


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("lines, message", [
    ([LINE, '{"question_id": "chal-508",'], "line 2: not valid JSON: Expecting property name enclosed in double "
                                            "quotes (column 28)"),
    ([_without(LINE, "gold")], "line 1: field 'gold': missing"),
    ([LINE, _line(QUESTIONS[1], teachers={**LINE["teachers"], "delta": LINE["teachers"]["alpha"]})],
     "line 2: field 'teachers': unknown teacher 'delta' (the committee: alpha, beta, gamma)"),
    ([_line(QUESTIONS[0], reviews=[{"reviewer": "delta", "author": "alpha", "score": 4}])],
     "line 1: field 'reviews[0].reviewer': unknown teacher 'delta'"),
    ([_line(QUESTIONS[0], teachers={**LINE["teachers"], "beta": {"rationale": "The answer is 2."}})],
     "line 1: field 'teachers.beta.feedback': missing"),
    ([_line(QUESTIONS[0], teachers={**LINE["teachers"], "beta": {"rationale": "x", "feedback": "y", "why": "z"}})],
     "line 1: field 'teachers.beta.why': unknown field; the fields are rationale, feedback"),
    ([_line(QUESTIONS[0], reviews=[{**LINE["reviews"][0], "score": "four"}, *LINE["reviews"][1:]])],
     "line 1: field 'reviews[0].score': expected a number, got 'four' (a review's text goes in 'review')"),
    ([_line(QUESTIONS[0], reviews=[{**LINE["reviews"][0], "review": "[4]"}, *LINE["reviews"][1:]])],
     "line 1: field 'reviews[0]': give a 'score' or a 'review' (its text), one of the two"),
    ([_line(QUESTIONS[0], reviews=LINE["reviews"][1:])], "line 1: field 'reviews': no review by beta of alpha's "
                                                        "rationale"),
    ([_line(QUESTIONS[0], reviews=[{"reviewer": "beta", "author": "beta", "score": 4}])],
     "line 1: field 'reviews[0].reviewer': beta reviews its own work"),
    ([LINE, _line(QUESTIONS[1]), LINE], "line 3: field 'question_id': chal-777 again (first on line 1)"),
    ([LINE, {**LINE, "question_id": "chal-736"}, {**LINE, "question_id": "nope"}],
     "2 question(s) not in svamp's train split of this run: chal-736 (line 2), nope (line 3)"),
    ([{**LINE, "gold": 146}], "line 1: field 'gold': 146 is not svamp's gold answer to chal-777 ('145')"),
    ([{**LINE, "question": "How many bananas?"}], "line 1: field 'question': differs from svamp's question chal-777"),
    ([{**LINE, "student_answer": "The answer is 145."}], "line 1: field 'student_answer': the task's grader reads "
                                                        "it as correct (145): only mistakes are taught"),
    ([{**LINE, "student_answer": {"text": "x", "finish_reason": "eos"}}],
     "line 1: field 'student_answer.finish_reason': 'eos' is not one of stop, length, prompt_too_long"),
])
def test_bad_input_is_one_line_naming_the_file_the_line_and_the_field(tmp_path, lines, message):
    path = tmp_path / "committee.jsonl"
    _write(path, lines)
    result = _import(path, tmp_path / "run")
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and errors[0].startswith(f"Error: {path}: {message}"), \
        result.output
    assert not (tmp_path / "run" / "config.yaml").exists()      # nothing written


def test_export_writes_the_records_for_trl_axolotl_and_llama_factory(tmp_path, committee):
    run = tmp_path / "run"
    assert _import(committee, run).exit_code == 0
    refused = _mapd("export", "--run-dir", run, "--format", "messages")
    assert refused.exit_code == 1 and "not written yet; run `mapd dataset` first" in refused.output
    assert _mapd("dataset", "--run-dir", run).exit_code == 0
    records = pl.read_parquet(run / "dataset" / "records.parquet").to_dicts()
    shapes = {"messages": lambda r: {"messages": [{"role": "user", "content": r["prompt"]},
                                                  {"role": "assistant", "content": r["response"]}]},
              "prompt-completion": lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}],
                                              "completion": [{"role": "assistant", "content": r["response"]}]},
              "alpaca": lambda r: {"instruction": r["prompt"], "input": "", "output": r["response"]}}
    for fmt, shape in shapes.items():
        out = tmp_path / f"{fmt}.jsonl"
        result = _mapd("export", "--run-dir", run, "--format", fmt, "--out", out)
        assert result.exit_code == 0 and f"6 lines written to {out}" in result.output, result.output
        assert [json.loads(line) for line in out.read_text().splitlines()] == [
            {**shape(r), "record_id": r["record_id"], "kind": r["kind"]} for r in records]
    assert _mapd("export", "--run-dir", run, "--format", "alpaca").exit_code == 0
    assert (run / "export" / "alpaca.jsonl").read_text() == (tmp_path / "alpaca.jsonl").read_text()


def _scripts(gold_of: dict):
    """A student always wrong; teachers a and c right, b wrong; c's rationale is sometimes cut at
    max_tokens; reviews score by a hash of what they review, or give no score."""
    def student(request, adapter):
        return "I think the answer is 999999."

    def teacher(name):
        def answer(request, adapter):
            parts = request.id.split(":")
            if len(parts) == 3:                   # a review: <author>:<kind>:<question id>
                n = sum(map(ord, request.id + name)) % 6
                return "I cannot tell." if n == 5 else f"Some steps are fine. Score: [{n + 1}]"
            kind, qid = parts
            if kind == "feedback":
                return f"{name}: the student added instead of dividing."
            cut = " (cut" if name.endswith("c") and sum(map(ord, qid)) % 2 else ""
            return f"By {name}: the answer is {'123456' if name.endswith('b') else gold_of[qid]}.{cut}"
        return answer

    return {"smollm2-135m-instruct": ScriptedEngine(student),
            **{f"demo-teacher-{k}": ScriptedEngine(teacher(f"demo-teacher-{k}"),
                                                   finish=lambda text: "length" if "(cut" in text else "stop")
               for k in "abc"}}


def test_a_runs_committee_exported_and_imported_again_gives_the_same_records(tmp_path):
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "first", limit=6, num_shards=2)
    cfg.save()
    graph = Graph(cfg)
    run_local(graph, ScriptedPool(_scripts({q.id: q.gold for q in graph.one("exam").questions})), through="dataset")
    exported = _mapd("export", "--run-dir", cfg.run_dir, "--format", "committee")
    assert exported.exit_code == 0 and "6 lines written" in exported.output, exported.output
    file = cfg.run_dir / "export" / "committee.jsonl"
    assert '"finish_reason": "length"' in file.read_text()

    # Another run, another shard count: the same decisions and records.
    second = tmp_path / "second"
    result = _mapd("import", "--task", "svamp", "--limit", 6, "--run-dir", second, file)
    assert result.exit_code == 0, result.output
    assert _mapd("dataset", "--run-dir", second).exit_code == 0
    assert RunConfig.load(second).num_shards == 1
    records = [pl.read_parquet(run / "dataset" / "records.parquet") for run in (cfg.run_dir, second)]
    assert records[0].equals(records[1])
    # Every decision too, and what it was made on; only the token counts are not in the file.
    decisions = [pl.read_parquet(run / "dataset" / "decisions.parquet").drop("prompt_tokens", "completion_tokens")
                 for run in (cfg.run_dir, second)]
    assert decisions[0].equals(decisions[1])
    assert pl.read_parquet(second / "dataset" / "records.parquet").height > 0
    assert json.loads((second / "dataset" / "stats.json").read_text()) == \
        json.loads((cfg.run_dir / "dataset" / "stats.json").read_text())


def test_settings_of_the_run_decide_what_of_the_file_it_uses(tmp_path, committee):
    run = tmp_path / "run"
    result = _import(committee, run, "--no-feedback")
    assert result.exit_code == 0, result.output
    assert "left unused: 9 feedback texts (the run has --no-feedback), 2 reviews" in result.output
    graph = Graph(RunConfig.load(run))
    assert set(pl.concat([t.results() for t in graph.named("teach")])["kind"]) == {"rationale"}
    with pytest.raises(ValueError, match="has one round"):
        Graph(replace(graph.cfg, init_adapter=str(run / "train" / "adapter")))
    refused = _mapd("import", "--run-dir", run, "--teachers", ",".join(TEACHERS), committee)
    assert refused.exit_code != 0 and "leave --teachers out" in refused.output
    # A run of generated committee outputs is not replaced by a file without --reconfigure.
    RunConfig(task="svamp", run_dir=tmp_path / "generated", limit=4).save()
    refused = _import(committee, tmp_path / "generated")
    assert refused.exit_code == 1 and "add --reconfigure" in refused.output


@pytest.mark.slow
def test_an_imported_committee_trains_and_evaluates_the_embedded_student(tmp_path, committee):
    """dataset -> train -> eval on the real SmolLM2 (two training steps, two test questions), then
    the report, on a run whose committee outputs are imported."""
    import yaml

    from mapd.local_teachers.registry import REGISTRY_DIR

    # The embedded student with short answers: the test follows the stages, not the student's wits.
    student = yaml.safe_load((REGISTRY_DIR / "smollm2-135m-instruct.yaml").read_text())
    student["sampling"]["max_tokens"] = 48
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(student))
    run = tmp_path / "run"
    result = _mapd("import", "--task", "svamp", "--limit", 3, "--test-limit", 3, "--run-dir", run, "--student", tmp_path / "student.yaml",
                   "--engine", "transformers", "--max-steps", 2, "--lora-r", 4, "--batch-size", 2,
                   "--max-length", 256, committee)
    assert result.exit_code == 0, result.output
    distilled = _mapd("distill", "--run-dir", run)
    assert distilled.exit_code == 0, distilled.output
    assert re.search(r"\| svamp \| smollm2-135m-instruct \| 1 \| .* \| 3 \|", distilled.output), distilled.output
    card = json.loads((run / "train" / "adapter" / "card.json").read_text())
    assert card["counts"]["per_kind"] == {"feedback": 3, "rationale": 3}
    summary = [line["stage"] for line in json.loads((run / "summary.json").read_text())]
    assert summary[:7] == ["exam", "teach/alpha", "teach/beta", "teach/gamma", "review/alpha", "review/beta",
                           "review/gamma"] and summary[-1] == "eval/distilled"
    report = _mapd("report", "--run-dir", run)
    assert report.exit_code == 0 and (run / "report" / "index.html").is_file(), report.output
