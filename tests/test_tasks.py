"""Task loaders: bundled originals, fresher copies in a directory, the offline
`datasets` route, and the error messages for bad input."""
from __future__ import annotations

import json
import shutil

import pytest

from mapd.batch.tasks import TASKS, DataError, Question, Verdict, get_task
from mapd.batch.tasks.base import DATA_DIR
from mapd.batch.tasks.logiqa import order_options, strip_option_prefix
from mapd.batch.tasks.svamp import SPLIT_FILE

COUNTS = {"gsm8k": (7473, 1319), "svamp": (700, 300),
          "strategyqa": (2061, 229), "logiqa": (651, 651)}


@pytest.fixture(scope="module")
def loaded() -> dict[tuple[str, str], list[Question]]:
    return {(name, split): TASKS[name].load(split)
            for name in COUNTS for split in ("train", "test")}


# ------------------------------------------------------------- registry

def test_registry_names_and_families():
    assert list(TASKS) == ["gsm8k", "svamp", "strategyqa", "logiqa"]
    assert {n: t.family for n, t in TASKS.items()} == {
        "gsm8k": "math", "svamp": "math", "strategyqa": "yesno", "logiqa": "choice"}
    assert get_task("GSM8K") is TASKS["gsm8k"]
    assert "Eval.txt" in TASKS["logiqa"].note and "Test.txt" in TASKS["logiqa"].note


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="gsm8k, svamp, strategyqa, logiqa"):
        get_task("mmlu")


def test_unknown_split_names_valid_ones():
    with pytest.raises(ValueError, match="train, test"):
        TASKS["gsm8k"].load("dev")


# ------------------------------------------------------- bundled originals

@pytest.mark.parametrize("name", list(COUNTS))
def test_row_counts_and_unique_ids(loaded, name):
    train, test = loaded[name, "train"], loaded[name, "test"]
    assert (len(train), len(test)) == COUNTS[name]
    ids = [q.id for q in train + test]
    assert len(set(ids)) == len(ids)
    assert all(q.text and q.gold for q in train + test)


def test_gsm8k_rows(loaded):
    train, test = loaded["gsm8k", "train"], loaded["gsm8k", "test"]
    assert (train[0].id, train[0].gold) == ("gsm8k-train-0", "72")
    assert train[0].text.startswith("Natalia sold clips to 48 of her friends")
    assert (test[0].id, test[0].gold) == ("gsm8k-test-0", "18")
    assert test[0].text.startswith("Janet\u2019s ducks lay 16 eggs")
    assert train[345].gold == "1080"  # written "1,080"
    assert train[644].gold == "109200000"
    assert test[489].gold == "-10"
    assert all("####" not in q.text for q in train[:50])


def test_svamp_rows(loaded):
    train, test = loaded["svamp", "train"], loaded["svamp", "test"]
    first = train[0]
    assert (first.id, first.gold) == ("chal-777", "145")  # Answer 145.0
    assert first.text == ("There are 87 oranges and 290 bananas in Philip's collection. If the "
                          "bananas are organized into 2 groups and oranges are organized into 93 "
                          "groups How big is each group of bananas?")
    assert (test[0].id, test[0].gold) == ("chal-736", "27")
    assert not {q.id for q in train} & {q.id for q in test}


def test_svamp_split_is_chilled_700_300():
    # The paper's split: ChilleD/SVAMP's train/test IDs (provenance in svamp/SOURCE.txt).
    split = json.loads((DATA_DIR / "svamp" / SPLIT_FILE).read_text())
    assert "ChilleD/SVAMP" in split["source"]
    train, test = split["train"], split["test"]
    assert (len(train), len(set(train)), len(test), len(set(test))) == (700, 700, 300, 300)
    assert not set(train) & set(test)
    all_ids = {row["ID"] for row in json.loads((DATA_DIR / "svamp" / "SVAMP.json").read_text())}
    assert set(train) | set(test) == all_ids
    # In ChilleD's row order (row 0 of train and of test as the Hub's viewer shows them), and
    # one of its test questions that the project's earlier seeded split had put in train.
    assert (train[:2], test[:2]) == (["chal-777", "chal-508"], ["chal-736", "chal-162"])
    assert "chal-1000" in test


def test_svamp_loaded_splits_follow_split_file(loaded):
    split = json.loads((DATA_DIR / "svamp" / SPLIT_FILE).read_text())
    for name in ("train", "test"):
        assert [q.id for q in loaded["svamp", name]] == split[name]


def test_strategyqa_rows(loaded):
    train, test = loaded["strategyqa", "train"], loaded["strategyqa", "test"]
    assert train[0] == Question(
        "2bc9c4f9c19c167187f2",
        "Are more people today related to Genghis Khan than Julius Caesar?", "yes",
        solution="Julius Caesar had three children. Genghis Khan had sixteen children. Modern geneticists have "
                 "determined that  out of every 200 men today has DNA that can be traced to Genghis Khan.")
    assert (test[0].id, test[0].gold) == ("e0044a7b4d146d611e73", "no")
    assert {q.gold for q in train} == {"yes", "no"}
    assert sum(q.gold == "yes" for q in train) == 964


def test_logiqa_rows(loaded):
    train, test = loaded["logiqa", "train"], loaded["logiqa", "test"]
    first = train[0]
    assert (first.id, first.gold) == ("logiqa-eval-0", "A")
    assert test[0].id == "logiqa-test-0"
    lines = first.text.split("\n")
    assert lines[0].startswith("Black Americans are twice as likely")
    assert [line[:3] for line in lines[2:]] == ["A. ", "B. ", "C. ", "D. "]
    assert lines[2] == "A. " + first.options[0]
    assert all(len(q.options) == 4 for q in train + test)
    assert sum(q.gold == "D" for q in train) == 270


def test_logiqa_damaged_prefixes(loaded):
    train, test = loaded["logiqa", "train"], loaded["logiqa", "test"]
    # Eval record 40: line 8 reads "d.The fertility rate ..." (lower-case letter).
    assert train[39].options[3].startswith("The fertility rate is not directly")
    # Test record 8: "A Shannan" .. "D Jiangbei" (space instead of a dot).
    assert test[7].options == ("Shannan", "Jiangnan", "Shanbei", "Jiangbei")
    # Test record 11: "A? Many Chinese people ..."
    assert test[10].options[0].startswith("Many Chinese people")
    # The translation moved letters into the text: kept untouched.
    assert train[82].options[1].startswith("In the B.NEC fast chess game")
    # Test record 109: lines 6/7 read "C.No.3 ..." then "B.No.2 ..."; the gold
    # letter follows the printed labels, so the options are put in label order.
    valves = test[108]
    assert valves.options[1:3] == ("No.2 valve and No.3 valve.", "No.3 valve and No.5 valve.")
    assert valves.gold == "B"  # No.1 open -> No.2 open, No.4 closed -> No.3 open
    assert "\nB. No.2 valve and No.3 valve.\nC. No.3 valve" in valves.text
    # A leading article at a non-matching position is text, not a label.
    assert train[532].options[2].startswith("A small amount of cultivated land")


@pytest.mark.parametrize("raw, position, expected", [
    ("A.Some text", 0, "Some text"),
    ("a. some text", 0, "some text"),
    ("B Jiangnan", 1, "Jiangnan"),
    ("C? Geng is not", 2, "Geng is not"),
    ("D) last", 3, "last"),
    ("A small amount", 2, "A small amount"),
    ("C.No.3 valve", 1, "C.No.3 valve"),
    ("Mr.A.P wrote", 0, "Mr.A.P wrote"),
    ("Between us", 1, "Between us"),
])
def test_strip_option_prefix(raw, position, expected):
    assert strip_option_prefix(raw, position) == expected


def test_order_options():
    assert order_options(["A.a", "C.c", "B.b", "D.d"]) == ["A.a", "B.b", "C.c", "D.d"]
    # Only a full clean set of labels is trusted; otherwise position wins.
    assert order_options(["A.a", "C.c", "B b", "D.d"]) == ["A.a", "C.c", "B b", "D.d"]
    assert order_options(["A.a", "A.B, C", "C.c", "D.d"]) == ["A.a", "A.B, C", "C.c", "D.d"]


def test_grade_dispatches_on_family(loaded):
    q = loaded["logiqa", "train"][0]
    assert TASKS["logiqa"].grade("The answer is (A).", q).verdict is Verdict.CORRECT
    q = loaded["gsm8k", "test"][0]
    assert TASKS["gsm8k"].grade("She makes $18 a day. #### 18", q).answer == "18"
    q = loaded["strategyqa", "test"][0]
    assert TASKS["strategyqa"].grade("No.", q).verdict is Verdict.CORRECT


# ------------------------------------------------ fresher copy in a directory

def test_directory_of_originals(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        json.dumps({"question": "Q1?", "answer": "1+1=2\n#### 2"}) + "\n"
        + json.dumps({"question": "Q2?", "answer": "so\n#### 1,234"}) + "\n")
    rows = TASKS["gsm8k"].load("train", source=str(tmp_path))
    assert [(q.id, q.text, q.gold) for q in rows] == [
        ("gsm8k-train-0", "Q1?", "2"), ("gsm8k-train-1", "Q2?", "1234")]


def test_logiqa_directory_with_trailing_newline(tmp_path):
    src = (DATA_DIR / "logiqa" / "Test.txt").read_text(encoding="utf-8")
    (tmp_path / "Test.txt").write_text("\n".join(src.split("\n")[:16]) + "\n", encoding="utf-8")
    rows = TASKS["logiqa"].load("test", source=tmp_path)
    assert [q.id for q in rows] == ["logiqa-test-0", "logiqa-test-1"]


def test_svamp_directory_uses_bundled_split(tmp_path):
    shutil.copy(DATA_DIR / "svamp" / "SVAMP.json", tmp_path / "SVAMP.json")
    rows = TASKS["svamp"].load("test", source=tmp_path)
    assert [q.id for q in rows] == [q.id for q in TASKS["svamp"].load("test")]


# -------------------------------------------------------- bad input

def _message(excinfo) -> str:
    return str(excinfo.value)


def test_malformed_json_line(tmp_path):
    good = json.dumps({"question": "Q?", "answer": "#### 1"})
    broken = '{"question": "Q?" "answer": 1}'
    (tmp_path / "train.jsonl").write_text(f"{good}\n{good}\n{broken}\n")
    with pytest.raises(DataError) as excinfo:
        TASKS["gsm8k"].load("train", source=tmp_path)
    message = _message(excinfo)
    assert str(tmp_path / "train.jsonl") in message
    assert "row 3" in message and "not valid JSON" in message and "delimiter" in message


def test_missing_field(tmp_path):
    good = json.dumps({"question": "Q?", "answer": "#### 1"})
    (tmp_path / "test.jsonl").write_text(f"{good}\n{json.dumps({'question': 'Q?'})}\n")
    with pytest.raises(DataError) as excinfo:
        TASKS["gsm8k"].load("test", source=tmp_path)
    assert _message(excinfo) == f"{tmp_path / 'test.jsonl'}: row 2: field 'answer': missing"
    assert (excinfo.value.row, excinfo.value.field) == (2, "answer")


def test_gold_without_marker(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "Q?", "answer": "it is 4"}) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl: row 1: field 'answer': no '####'"):
        TASKS["gsm8k"].load("test", source=tmp_path)


def test_wrong_type(tmp_path):
    rows = [{"qid": "x1", "question": "Is it?", "answer": True},
            {"qid": "x2", "question": "Is it?", "answer": "yes"}]
    (tmp_path / "dev.json").write_text(json.dumps(rows))
    with pytest.raises(DataError) as excinfo:
        TASKS["strategyqa"].load("test", source=tmp_path)
    message = _message(excinfo)
    assert str(tmp_path / "dev.json") in message
    assert "row 2" in message and "field 'answer'" in message and "boolean" in message


def test_svamp_missing_answer(tmp_path):
    rows = [{"ID": "chal-1", "Body": "A b.", "Question": "C?", "Answer": 3.0},
            {"ID": "chal-2", "Body": "A b.", "Question": "C?"}]
    (tmp_path / "SVAMP.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"SVAMP\.json: row 2: field 'Answer': missing"):
        TASKS["svamp"].load("train", source=tmp_path)


def test_malformed_json_array(tmp_path):
    (tmp_path / "train.json").write_text(
        '[\n {"qid": "a", "question": "Q?", "answer": true}\n {"qid": "b"}\n]')
    with pytest.raises(DataError, match=r"train\.json: line 3: not valid JSON \(Expecting ','"):
        TASKS["strategyqa"].load("train", source=tmp_path)


def test_datasets_row_with_bad_options(tmp_path):
    path = tmp_path / "logiqa.jsonl"
    path.write_text(json.dumps({"context": "c", "query": "q", "options": ["x", "y"],
                                "correct_option": 0}) + "\n")
    with pytest.raises(DataError,
                       match=r"logiqa\.jsonl: row 1: field 'options': expected a list of 4"):
        TASKS["logiqa"].load("test", source=path, shared=False)


def _logiqa_record(gold: str = "b") -> list[str]:
    return ["", gold, "Some context.", "Which follows?", "A.one", "B.two", "C.three", "D.four"]


def test_logiqa_bad_gold_letter(tmp_path):
    lines = _logiqa_record() + _logiqa_record("e")
    (tmp_path / "Eval.txt").write_text("\n".join(lines))
    with pytest.raises(DataError) as excinfo:
        TASKS["logiqa"].load("train", source=tmp_path)
    message = _message(excinfo)
    assert str(tmp_path / "Eval.txt") in message
    assert "row 2 (line 10)" in message and "field 'correct_option'" in message
    assert "'e'" in message


def test_logiqa_wrong_line_count(tmp_path):
    lines = _logiqa_record() + _logiqa_record()[:6]
    (tmp_path / "Test.txt").write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"Test\.txt: row 2 \(line 9\): field 'options': "
                                        r"record has 6 of 8 lines"):
        TASKS["logiqa"].load("test", source=tmp_path)


def test_logiqa_shifted_record(tmp_path):
    lines = _logiqa_record() + _logiqa_record()[1:] + _logiqa_record()
    (tmp_path / "Test.txt").write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"row 2 \(line 9\): field 'separator'"):
        TASKS["logiqa"].load("test", source=tmp_path)


def test_wrong_path(tmp_path):
    missing = tmp_path / "nowhere" / "gsm8k.jsonl"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TASKS["gsm8k"].load("test", source=missing)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        TASKS["gsm8k"].load("test", source=str(tmp_path / "no_such_dir"))


def test_missing_original_file_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr("mapd.batch.tasks.base.DATA_DIR", tmp_path)
    with pytest.raises(DataError, match=r"strategyqa/dev\.json: no such file"):
        TASKS["strategyqa"].load("test")


# ---------------------------------------------------- offline datasets route
# A file given for one split alone (shared=False, as --train-data/--test-data); files holding
# both splits are in test_data_splits.py.

def test_datasets_route_jsonl(tmp_path):
    path = tmp_path / "gsm_test.jsonl"
    path.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"...\n#### {i}"}) + "\n"
                            for i in range(3)))
    rows = TASKS["gsm8k"].load("test", source=str(path), shared=False)
    assert [(q.id, q.gold) for q in rows] == [("gsm8k-test-0", "0"), ("gsm8k-test-1", "1"),
                                             ("gsm8k-test-2", "2")]


def test_datasets_route_schemas(tmp_path):
    logiqa = tmp_path / "logiqa.json"
    logiqa.write_text(json.dumps([{"context": "All cats purr.", "query": "Which follows?",
                                   "options": ["Dogs purr", "Tom purrs", "No cat purrs", "None"],
                                   "correct_option": 1}]))
    (q,) = TASKS["logiqa"].load("train", source=logiqa, shared=False)
    assert (q.id, q.gold, q.options[1]) == ("logiqa-train-0", "B", "Tom purrs")
    assert q.text.endswith("\nA. Dogs purr\nB. Tom purrs\nC. No cat purrs\nD. None")

    svamp = tmp_path / "svamp.jsonl"
    svamp.write_text(json.dumps({"ID": "chal-9", "Body": "Tom has 3 apples",
                                 "Question": "How many?", "Equation": "( 3.0 )",
                                 "Answer": 3.0}) + "\n")
    (q,) = TASKS["svamp"].load("test", source=svamp, shared=False)
    assert (q.id, q.text, q.gold) == ("chal-9", "Tom has 3 apples How many?", "3")

    sqa = tmp_path / "sqa.jsonl"
    sqa.write_text(json.dumps({"question": "Is water wet?", "answer": False}) + "\n")
    (q,) = TASKS["strategyqa"].load("test", source=sqa, shared=False)
    assert (q.id, q.gold) == ("strategyqa-test-0", "no")


def test_datasets_route_row_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "Q?", "answer": "#### 1"}) + "\n"
                    + json.dumps({"question": "Q?", "answer": None}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl: row 2: field 'answer': missing"):
        TASKS["gsm8k"].load("train", source=path, shared=False)


def test_datasets_route_is_offline(tmp_path):
    import os

    with pytest.raises(DataError, match="offline"):
        TASKS["gsm8k"].load("test", source="no-such-owner/no-such-dataset")
    assert "HF_DATASETS_OFFLINE" in os.environ and "HF_HUB_OFFLINE" in os.environ
