"""Data splits that cannot leak (#12 item 6): where each split's questions come from (--data,
--train-data, --test-data: a folder of originals, a data file, a dataset id in the local Hugging
Face cache), how many of each are used (--limit, --test-limit), and the eval's refusal of a test
split that shares questions with the train split."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mapd.batch.config import RunConfig
from mapd.batch.graph import Graph
from mapd.batch.options import resolve
from mapd.batch.tasks import TASKS, DataError, shared_questions
from mapd.batch.tasks.base import DATA_DIR, normalised


def _gsm(question: str, gold: int, **extra) -> dict:
    return {"question": question, "answer": f"Add them.\n#### {gold}", **extra}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _splits(cfg: RunConfig) -> tuple[list, list]:
    """The questions the exam and the base eval take."""
    graph = Graph(cfg)
    return graph.one("exam").questions, graph["eval/base"].questions


def _mapd(*args):
    from mapd.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------- one source for both splits

def test_a_file_without_split_marks_is_refused_for_both_splits(tmp_path):
    path = _jsonl(tmp_path / "gsm.jsonl", [_gsm("What is 1 and 1?", 2), _gsm("What is 2 and 2?", 4)])
    with pytest.raises(DataError) as refused:
        _splits(RunConfig(task="gsm8k", run_dir=tmp_path / "run", data=str(path)))
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "'split'" in message and "--train-data and --test-data" in message
    # The same one line from the command line, before anything is written.
    out = _mapd("plan", "--task", "gsm8k", "--run-dir", tmp_path / "run", "--data", path)
    assert out.exit_code == 1 and message in out.output and "Traceback" not in out.output


def test_a_file_whose_rows_mark_their_split_is_split_by_them(tmp_path):
    rows = [_gsm("Train one?", 1, split="train"), _gsm("Test one?", 2, split="test"),
            _gsm("Train two?", 3, split="train"), _gsm("Test two?", 4, split="test")]
    path = _jsonl(tmp_path / "both.jsonl", rows)
    train, test = _splits(RunConfig(task="gsm8k", run_dir=tmp_path / "run", data=str(path)))
    # Ids keep the row's place in the file, so they and any error point at it.
    assert [(q.id, q.text, q.gold) for q in train] == [("gsm8k-train-0", "Train one?", "1"),
                                                      ("gsm8k-train-2", "Train two?", "3")]
    assert [(q.id, q.gold) for q in test] == [("gsm8k-test-1", "2"), ("gsm8k-test-3", "4")]

    _jsonl(path, rows + [_gsm("Valid?", 5, split="validation")])
    with pytest.raises(DataError, match=rf"^{path}: row 5: field 'split': expected one of train, test, "
                                        r"got 'validation'$"):
        TASKS["gsm8k"].load("test", str(path))
    _jsonl(path, [r for r in rows if r["split"] == "train"])
    with pytest.raises(DataError, match=rf"^{path}: field 'split': no row has 'split': 'test'$"):
        TASKS["gsm8k"].load("test", str(path))


def test_a_folder_of_original_files_gives_both_splits(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [_gsm("Train one?", 1), _gsm("Train two?", 2)])
    _jsonl(tmp_path / "test.jsonl", [_gsm("Test one?", 3)])
    train, test = _splits(RunConfig(task="gsm8k", run_dir=tmp_path / "run", data=str(tmp_path)))
    assert [q.text for q in train] == ["Train one?", "Train two?"] and [q.text for q in test] == ["Test one?"]


# ------------------------------------------------------------- one source per split

def test_train_data_and_test_data_each_give_their_split(tmp_path):
    train_file = _jsonl(tmp_path / "mine.jsonl", [_gsm("Mine one?", 1), _gsm("Mine two?", 2)])
    test_file = _jsonl(tmp_path / "held-out.jsonl", [_gsm("Held out?", 3)])
    cfg = RunConfig(task="gsm8k", run_dir=tmp_path / "run", train_data=str(train_file), test_data=str(test_file))
    train, test = _splits(cfg)
    assert [q.text for q in train] == ["Mine one?", "Mine two?"] and [(q.id, q.text) for q in test] == [
        ("gsm8k-test-0", "Held out?")]
    # Either one over --data (here the bundled files): the other split keeps its source.
    train, test = _splits(RunConfig(task="gsm8k", run_dir=tmp_path / "run2", test_data=str(test_file)))
    assert len(train) == 7473 and [q.text for q in test] == ["Held out?"]
    # Each stage's identity names the source it read.
    graph = Graph(cfg)
    assert graph.one("exam").settings()["data"] == str(train_file)
    assert graph["eval/base"].settings()["data"] == str(test_file)


def _dataset_rows() -> dict[str, list[dict]]:
    """SVAMP rows as ChilleD/SVAMP has them, the answer as text as some exports write it."""
    return {split: [{"ID": f"chal-{split}-{i}", "Body": f"Tom has {i} {split} apples", "Question": "How many?",
                     "Equation": f"( {i}.0 )", "Answer": f"{i}.0", "Type": "Addition"} for i in range(1, 4)]
            for split in ("train", "test")}


def test_a_dataset_in_the_local_datasets_cache(tmp_path, monkeypatch):
    """What datasets.load_dataset("acme/svamp-mini") reads offline: the arrow files a download once
    prepared under HF_DATASETS_CACHE/acme___svamp-mini/<config>/<version>/<hash>/, here written
    by datasets' own json builder."""
    import datasets
    from datasets.packaged_modules.json.json import Json

    files = {split: str(_jsonl(tmp_path / f"{split}.jsonl", rows)) for split, rows in _dataset_rows().items()}
    builder = Json(cache_dir=str(tmp_path / "build"), dataset_name="svamp-mini", config_name="default",
                   hash="0123abcd", data_files=files)
    builder.download_and_prepare()
    cache = tmp_path / "hf-datasets"
    shutil.copytree(builder.cache_dir, cache / "acme___svamp-mini" / "default" / "0.0.0" / "0123abcd")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))

    train, test = _splits(RunConfig(task="svamp", run_dir=tmp_path / "run", data="acme/svamp-mini"))
    assert [(q.id, q.gold) for q in train] == [("chal-train-1", "1"), ("chal-train-2", "2"), ("chal-train-3", "3")]
    assert [q.text for q in test][0] == "Tom has 1 test apples How many?"


def test_a_dataset_in_the_local_hub_cache(tmp_path, monkeypatch):
    """A dataset repo as `huggingface-cli download --repo-type dataset` leaves it: refs/main names
    the snapshot, whose data/<split>-*.parquet files datasets reads as the splits."""
    import datasets

    repo = tmp_path / "hub" / "datasets--acme--svamp-mini"
    snapshot = repo / "snapshots" / ("ab" * 20)
    (snapshot / "data").mkdir(parents=True)
    for split, rows in _dataset_rows().items():
        datasets.Dataset.from_list(rows).to_parquet(snapshot / "data" / f"{split}-00000-of-00001.parquet")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("ab" * 20)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", train_data="acme/svamp-mini", test_data="acme/svamp-mini")
    train, test = _splits(cfg)
    assert [q.id for q in train] == ["chal-train-1", "chal-train-2", "chal-train-3"]
    assert [(q.id, q.gold) for q in test] == [("chal-test-1", "1"), ("chal-test-2", "2"), ("chal-test-3", "3")]


# ------------------------------------------------------------------------ limits

def test_limit_cuts_the_train_split_and_test_limit_the_test_split(tmp_path):
    # A new run from the command line: --limit alone leaves every test question.
    cfg = resolve(tmp_path / "a", {"task": "svamp", "limit": 3}, reconfigure=False)
    train, test = _splits(cfg)
    assert (len(train), len(test), cfg.test_limit) == (3, 300, None)
    cfg = resolve(tmp_path / "b", {"task": "svamp", "limit": 3, "test_limit": 5}, reconfigure=False)
    train, test = _splits(cfg)
    assert (len(train), len(test)) == (3, 5)
    assert [q.id for q in test] == [q.id for q in TASKS["svamp"].load("test")[:5]]
    cfg = resolve(tmp_path / "c", {"task": "svamp", "test_limit": 2}, reconfigure=False)
    assert [len(s) for s in _splits(cfg)] == [700, 2]


def test_a_run_saved_before_test_limit_keeps_its_test_questions_and_identities(tmp_path):
    """Its limit cut both splits; loaded now, test_limit is that limit, and the stages' settings
    (their identity) are what they were: data and limit of the split read."""
    RunConfig(task="svamp", run_dir=tmp_path, limit=4).save()
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    for key in ("train_data", "test_data", "test_limit"):
        del raw[key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    old = RunConfig.load(tmp_path)
    assert (old.limit, old.test_limit) == (4, 4)
    graph = Graph(old)
    for stage in (graph.one("exam"), graph["eval/base"]):
        assert (stage.settings()["data"], stage.settings()["limit"]) == (None, 4)
        assert len(stage.questions) == 4
    # Options that agree with it are no change; saved again, the conversion is written down.
    assert resolve(tmp_path, {"limit": 4}, reconfigure=False) == old
    old.save()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["test_limit"] == 4


def test_test_limit_is_checked_like_limit(tmp_path):
    out = _mapd("plan", "--task", "svamp", "--run-dir", tmp_path, "--test-limit", 0)
    assert out.exit_code == 2 and "--test-limit" in out.output
    with pytest.raises(ValueError, match="key 'test_limit': must be at least 1, got 0"):
        RunConfig.from_dict({"task": "svamp", "test_limit": 0}, tmp_path)


# ------------------------------------------------------------------------ the leak check

def test_normalised_text_ignores_case_spacing_and_end_punctuation():
    assert normalised("  What is  1\nand 1? ") == normalised("what is 1 and 1") == "what is 1 and 1"
    assert normalised("What is 1 and 1?") != normalised("What is 1 or 1?")


def test_the_eval_refuses_a_test_split_that_shares_questions_with_the_train_split(tmp_path):
    train_file = _jsonl(tmp_path / "train.jsonl", [_gsm("What is 1 and 1?", 2), _gsm("What is 2 and 2?", 4),
                                                   _gsm("What is 3 and 3?", 6)])
    test_file = _jsonl(tmp_path / "test.jsonl", [_gsm("what is 2 AND 2", 4), _gsm("What is 5 and 5?", 10),
                                                 _gsm("  What is 3 and\n3?", 6)])
    cfg = RunConfig(task="gsm8k", run_dir=tmp_path / "run", train_data=str(train_file), test_data=str(test_file),
                    limit=1, test_limit=1)
    graph = Graph(cfg)
    assert len(graph.one("exam").questions) == 1      # the exam is not the eval's business
    with pytest.raises(DataError) as refused:
        graph["eval/base"].questions
    message = str(refused.value)
    # The whole splits are compared, whatever the limits: the data leaks, not just this run.
    assert message.startswith("eval/base: 2 of the 3 test questions") and "gsm8k-test-0" in message
    assert f"({test_file})" in message and f"({train_file})" in message and "\n" not in message
    # From the command line: one line, before any model loads or anything is written.
    out = _mapd("plan", "--task", "gsm8k", "--run-dir", tmp_path / "run", "--train-data", train_file,
                "--test-data", test_file)
    assert out.exit_code == 1 and "2 of the 3 test questions" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("name", list(TASKS))
def test_the_bundled_splits_share_no_question(name, tmp_path):
    task = TASKS[name]
    assert shared_questions(task.load("test"), task.load("train")) == []
    eval_base = Graph(RunConfig(task=name, run_dir=tmp_path))["eval/base"]
    assert len(eval_base.questions) == len(task.load("test"))
    assert task.source_label("test", None) == str(DATA_DIR / name / task.original_name("test"))


# ------------------------------------------------------------ the real stages, each split its own

def test_exam_and_eval_answer_their_own_splits_with_the_tiny_model(tmp_path, tiny_spec_file):
    train_file = _jsonl(tmp_path / "train.jsonl", [_gsm(f"Train question {i}?", i) for i in range(5)])
    test_file = _jsonl(tmp_path / "test.jsonl", [_gsm(f"Test question {i}?", i) for i in range(4)])
    run = tmp_path / "run"
    options = ["--task", "gsm8k", "--run-dir", run, "--student", tiny_spec_file, "--train-data", train_file,
               "--test-data", test_file, "--limit", 2, "--test-limit", 3]
    exam = _mapd("exam", *options)
    assert exam.exit_code == 0, exam.output
    evaluated = _mapd("eval", "base", "--run-dir", run)
    assert evaluated.exit_code == 0, evaluated.output
    graph = Graph(RunConfig.load(run))
    answered = {key: graph[key].results() for key in ("exam", "eval/base")}
    assert answered["exam"]["question"].to_list() == ["Train question 0?", "Train question 1?"]
    assert answered["eval/base"]["question"].to_list() == [f"Test question {i}?" for i in range(3)]
    assert answered["eval/base"]["gold"].to_list() == ["0", "1", "2"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["train_data"], saved["test_data"], saved["limit"], saved["test_limit"]) == (
        str(train_file), str(test_file), 2, 3)
