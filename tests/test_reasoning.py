"""Reasoning models (a <think>...</think> block before the answer) and students without a chat
template (#12 items 4 and 5): the split of a completion into its thinking and its answer; a
committee of scripted reasoning models through exam, teach, review, dataset, the summary and the
report; older shards without the `reasoning` column; the registry's new fields and the detection
from a chat template; and, on the real SmolLM2, the engine splitting a real completion, and one
plain template shared by the exam, training and the distilled eval."""
from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from mapd.batch.config import RunConfig
from mapd.batch.exam import SCHEMA, Exam
from mapd.batch.graph import Graph
from mapd.batch.local import run_local
from mapd.batch.report import examples
from mapd.batch.shards import read_manifest
from mapd.batch.stats import format_stats
from mapd.batch.summary import run_summary
from mapd.local_teachers.engine import Request, opens_thinking, split_reasoning
from mapd.local_teachers.fingerprint import model_fingerprint
from mapd.local_teachers.pool import EnginePool, load_engine
from mapd.local_teachers.registry import MAX_CONTEXT, REASONING_MAX_TOKENS, Sampling, load_spec

from fakes import ScriptedEngine, ScriptedPool

# ---------------------------------------------------------------- the split


@pytest.mark.parametrize("text, opened, expected", [
    ("<think>\n3 + 4 = 7.\n</think>\n\nThe answer is 7.", False, ("3 + 4 = 7.", "The answer is 7.")),
    ("  <think>a</think>b", False, ("a", "b")),
    ("<think>\n\n</think>\n\nThe answer is 7.", False, ("", "The answer is 7.")),      # an empty block
    ("3 + 4 = 7.\n</think>\nThe answer is 7.", True, ("3 + 4 = 7.", "The answer is 7.")),   # opened by the prompt
    ("<think>Let me look at every step of", False, ("Let me look at every step of", "")),   # cut inside it
    ("Let me look at every step of", True, ("Let me look at every step of", "")),
    ("The answer is 7.", False, (None, "The answer is 7.")),                               # no block: all answer
    ("The answer is 7. <think>late</think>", False, (None, "The answer is 7. <think>late</think>")),
])
def test_split_reasoning(text, opened, expected):
    assert split_reasoning(text, opened) == expected


def test_a_prompt_opens_thinking_when_it_ends_inside_a_block():
    assert opens_thinking("<|im_start|>assistant\n<think>\n")                     # DeepSeek-R1's distillations
    assert not opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")   # Qwen3, enable_thinking false
    assert not opens_thinking("<|im_start|>assistant\n")


# ---------------------------------------------------------------- a scripted reasoning committee

def _cut(text: str) -> str:
    """A thinking block never closed was cut at max_tokens."""
    return "length" if "<think>" in text and "</think>" not in text else "stop"


def _scripts(gold_of):
    """The student thinks the gold answer but answers a wrong one, so only a grader that reads the
    answer after the thinking finds the mistake. Teacher a thinks a wrong answer, then writes the
    right one; b is cut inside its thinking on every rationale and review; c does not think."""
    def student(request, adapter):
        q = request.messages[0][1].split("Problem: ", 1)[1].strip()
        return f"<think>Perhaps the answer is {gold_of[q]}.</think>\n\nI would guess 999999."

    def teacher(name):
        def answer(request, adapter):
            text = request.messages[0][1]
            if "You are reviewing" in text:
                return {"a": "<think>Tempted to give [1].\n[1]</think>\nEvery step is right. Score: [5]",
                        "b": "<think>I will weigh every step of this", "c": "Fine. [4]"}[name]
            if "Student's" in text:
                return {"a": "<think>The student slipped.</think>Feedback by a: check step 2.",
                        "b": "<think>Hmm.</think>Feedback by b: recheck.", "c": "Feedback by c: fine."}[name]
            gold = gold_of[text.split("Problem: ", 1)[1].strip()]
            return {"a": f"<think>First try: the answer is 123456. Let me check.</think>\n"
                         f"Solved by teacher a. The answer is {gold}.",
                    "b": "<think>This needs a long look at every step",
                    "c": f"Solved by teacher c. The answer is {gold}."}[name]
        return answer

    return {"smollm2-135m-instruct": ScriptedEngine(student, finish=_cut, thinks=True),
            **{f"demo-teacher-{k}": ScriptedEngine(teacher(k), finish=_cut, thinks=k != "c") for k in "abc"}}


@pytest.fixture(scope="module")
def committee(tmp_path_factory):
    """A run through the dataset with --keep-cut: even so, a completion cut in its thinking is
    unusable. Every accepted record kept, so the report's examples show a's rationales."""
    cfg = RunConfig(task="svamp", run_dir=tmp_path_factory.mktemp("reasoning") / "run", limit=6, num_shards=2,
                    keep_cut=True, selection="all")
    graph = Graph(cfg)
    run_local(graph, ScriptedPool(_scripts({q.text: q.gold for q in graph.one("exam").questions})), through="dataset")
    return graph


def test_graders_and_score_parsers_read_the_answer_after_the_thinking(committee):
    exam = committee.one("exam").results()
    # Its thinking holds the gold answer: read whole, every answer would be correct.
    assert set(exam["verdict"]) == {"wrong"} and set(exam["answer"]) == {"999999"}
    assert set(exam["completion"]) == {"I would guess 999999."}
    assert all(r.startswith("Perhaps the answer is ") for r in exam["reasoning"])
    teach = pl.concat([t.results() for t in committee.named("teach")]).filter(pl.col("kind") == "rationale")
    a = teach.filter(pl.col("teacher") == "demo-teacher-a")
    assert set(a["verdict"]) == {"correct"}
    assert set(a["reasoning"]) == {"First try: the answer is 123456. Let me check."}
    assert teach.filter(pl.col("teacher") == "demo-teacher-c")["reasoning"].null_count() == a.height   # no thinking
    reviews = pl.concat([r.results() for r in committee.named("review")])
    by_a = reviews.filter(pl.col("reviewer") == "demo-teacher-a")
    assert set(by_a["score"]) == {5} and set(by_a["completion"]) == {"Every step is right. Score: [5]"}
    assert set(by_a["reasoning"]) == {"Tempted to give [1].\n[1]"}
    by_b = reviews.filter(pl.col("reviewer") == "demo-teacher-b")
    assert by_b.height and set(by_b["score_status"]) == {"no_score"} and set(by_b["finish_reason"]) == {"length"}
    assert set(by_b["reasoning"]) == {"I will weigh every step of this"}


def test_a_completion_cut_in_its_thinking_is_unusable_and_counted_and_no_record_holds_thinking(committee):
    dataset = committee.one("dataset")
    decisions = pl.read_parquet(dataset.decisions_path)
    mistakes = committee.one("exam").results().height
    cut = decisions.filter(pl.col("teacher") == "demo-teacher-b", pl.col("kind") == "rationale")
    assert cut.height == mistakes and set(cut["unusable"]) == {"cut in reasoning"} and not cut["accepted"].any()
    records = pl.read_parquet(dataset.records_path)
    assert set(records.filter(pl.col("kind") == "rationale")["teacher"]) == {"demo-teacher-a", "demo-teacher-c"}
    assert not records["response"].str.contains("think|First try|slipped|Hmm").any()
    feedback = records.filter(pl.col("kind") == "feedback")["response"]
    assert feedback.len() and set(feedback) <= {"Feedback by a: check step 2.", "Feedback by b: recheck.",
                                                 "Feedback by c: fine."}

    stats = dataset.stats()
    assert stats["unusable"]["demo-teacher-b"] == {"rationale": {"cut in reasoning": mistakes}}
    assert f"demo-teacher-b {mistakes} rationale cut in reasoning" in format_stats(stats)
    lines = {line["stage"]: line for line in run_summary(committee)}
    teach_b, review_b = lines["teach/demo-teacher-b"], lines["review/demo-teacher-b"]
    assert (teach_b["hit_max_tokens"], teach_b["empty"], teach_b["note"]) == \
        (mistakes, 0, f"{mistakes} cut inside the reasoning")
    assert (review_b["hit_max_tokens"], review_b["note"]) == (review_b["rows"], f"{review_b['rows']} cut inside the reasoning")
    assert lines["dataset"]["hit_max_tokens"] == mistakes          # the unusable ones, counted as truncated
    assert lines["teach/demo-teacher-a"]["note"] == ""


def test_the_report_shows_the_thinking_beside_the_texts(committee):
    page = examples(committee)
    assert page.count("<details><summary>reasoning") >= 5   # three students' answers, a's rationale and feedback
    assert html.escape("First try: the answer is 123456. Let me check.") in page
    assert "Perhaps the answer is " in page and "not trained on" in page


def test_shards_written_before_the_reasoning_column_stay_done_and_are_read(tmp_path, monkeypatch):
    """Shard 0 of the exam and of every teacher written as before the column existed, shard 1
    after: none is redone, both read together, and the stages downstream run on them."""
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=6, num_shards=2)
    graph = Graph(cfg)
    pool = ScriptedPool(_scripts({q.text: q.gold for q in graph.one("exam").questions}))
    stages = [graph.one("exam"), *graph.named("teach")]
    with monkeypatch.context() as m:
        for stage in stages:
            m.setattr(stage, "schema", {k: v for k, v in stage.schema.items() if k != "reasoning"})
            stage.run([0], pool)
    old = {s.key: read_manifest(s.path(0))["sha256"] for s in stages}
    assert "reasoning" not in pl.read_parquet(stages[0].path(0)).columns
    run_local(graph, pool, through="dataset")
    assert {s.key: read_manifest(s.path(0))["sha256"] for s in stages} == old     # not redone
    exam = graph.one("exam").results()
    assert dict(exam.schema) == SCHEMA and exam["reasoning"].null_count() == exam.height // 2
    assert all(not s.pending() for s in graph.stages[:graph.stages.index(graph.one("dataset")) + 1])
    # b's rationales cut in their thinking: named so from the new shard; the old one had no column to tell.
    cut = pl.read_parquet(graph.one("dataset").decisions_path).filter(
        pl.col("teacher") == "demo-teacher-b", pl.col("kind") == "rationale")
    assert sorted(cut["unusable"]) == ["cut in reasoning"] * 3 + ["empty"] * 3


# ---------------------------------------------------------------- the registry

ENTRY = {"name": "thinker", "path": "/models/thinker", "engine": "vllm", "gpus": 1}


@pytest.mark.parametrize("field, value, message", [
    ("reasoning", "yes", "field 'reasoning': 'yes' is not true or false"),
    ("reasoning", 1, "field 'reasoning': 1 is not true or false"),
    ("chat_template_kwargs", ["enable_thinking"], "field 'chat_template_kwargs': ['enable_thinking'] is not a mapping"),
    ("chat_template_kwargs", {1: True}, "field 'chat_template_kwargs': {1: True} is not a mapping"),
])
def test_bad_reasoning_fields_are_one_line_naming_the_file_and_field(tmp_path, field, value, message):
    path = tmp_path / "thinker.yaml"
    path.write_text(yaml.safe_dump({**ENTRY, field: value}))
    with pytest.raises(ValueError) as err:
        load_spec(str(path))
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)


def _old_identity(spec) -> str:
    """A model's identity as it was computed before the reasoning fields existed."""
    d = dataclasses.asdict(spec)
    for key in ("path", "source", "slurm", "reasoning", "chat_template_kwargs"):
        d.pop(key)
    d["sampling"] = spec.sampling.identity()
    d["content"] = model_fingerprint(spec.path)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def test_the_reasoning_fields_enter_the_identity_only_when_they_change_the_completions(smol_spec, tmp_path):
    assert not smol_spec.thinks and smol_spec.identity() == _old_identity(smol_spec)
    raw = yaml.safe_load(Path(smol_spec.source).read_text())
    identities = {}
    for extra in ({}, {"reasoning": False}, {"reasoning": True}, {"chat_template_kwargs": {"enable_thinking": False}},
                  {"chat_template_kwargs": None}):
        path = tmp_path / f"{len(identities)}.yaml"
        path.write_text(yaml.safe_dump({**raw, **extra}))
        identities[json.dumps(extra)] = load_spec(str(path)).identity()
    # Unset, false (it does not think anyway) and an empty mapping: the identity entries always had.
    assert identities["{}"] == identities['{"reasoning": false}'] == identities['{"chat_template_kwargs": null}'] \
        == smol_spec.identity()
    assert len(set(identities.values())) == 3

    shipped = load_spec("qwen3-32b")       # the registry's reasoning teacher
    assert shipped.thinks and shipped.chat_template_kwargs == {"enable_thinking": True}
    assert shipped.sampling.max_tokens >= 4096 and shipped.sampling.max_tokens < shipped.max_model_len


QWEN3_LIKE = ("{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}"
              "{{ messages[0]['content'] }}")


@pytest.mark.parametrize("where", ["tokenizer_config.json", "named list", "chat_template.jinja", "none"])
def test_a_reasoning_model_is_told_by_its_chat_template(tmp_path, where):
    folder = tmp_path / "Some-Model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16", "max_position_embeddings": 40960}))
    tokenizer_config = {"eos_token": "<|im_end|>"}
    if where == "tokenizer_config.json":
        tokenizer_config["chat_template"] = QWEN3_LIKE
    elif where == "named list":
        tokenizer_config["chat_template"] = [{"name": "default", "template": "{{ 'x' }}"},
                                             {"name": "think", "template": "<|Assistant|><think>\n"}]
    elif where == "chat_template.jinja":
        (folder / "chat_template.jinja").write_text(QWEN3_LIKE)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    spec = load_spec(str(folder))
    assert spec.reasoning is None and spec.max_model_len == MAX_CONTEXT
    if where == "none":
        assert not spec.thinks and spec.sampling == Sampling()
        return
    # A folder-made entry of a reasoning model gets room to think.
    assert spec.thinks and spec.sampling.max_tokens == REASONING_MAX_TOKENS
    (folder / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16", "max_position_embeddings": 4096}))
    assert load_spec(str(folder)).sampling.max_tokens == 2048          # at most half the context


# ---------------------------------------------------------------- the real model

def _smol_copy(smol_spec, folder: Path, template: str | None) -> Path:
    """SmolLM2 with another chat template, or none: its small files copied, its weights linked."""
    folder.mkdir()
    for path in Path(smol_spec.path).iterdir():
        if path.name == "chat_template.jinja":
            continue
        if path.suffix == ".safetensors":
            (folder / path.name).symlink_to(path)
        else:
            shutil.copy(path, folder / path.name)
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    return folder


def _entry(folder: Path, tmp_path: Path, **extra) -> Path:
    path = tmp_path / f"{folder.name}-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"name": folder.name, "path": str(folder), "engine": "transformers",
                                    "dtype": "float32", "gpus": 0, "max_model_len": 1024,
                                    "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 6}, **extra}))
    return path


# A template that opens the thinking in its generation prompt (as DeepSeek-R1's distillations do),
# unless enable_thinking is false (as Qwen3's closes an empty block).
OPENING = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n"
           "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
           "{% else %}<think>\n{% endif %}{% endif %}")


@pytest.mark.slow
def test_the_engine_splits_a_real_completion_by_the_template_and_its_kwargs(smol_spec, tmp_path):
    folder = _smol_copy(smol_spec, tmp_path / "smol-thinks", OPENING)
    request = [Request("q", (("user", "What is 3 + 4?"),), Sampling(max_tokens=6), seed=0)]
    detected = load_spec(str(_entry(folder, tmp_path)))
    assert detected.reasoning is None and detected.thinks
    # One pool: the same weights under other rendering settings are another engine.
    pool = EnginePool()
    raw = pool.get(dataclasses.replace(detected, reasoning=False)).generate(request)[0]
    assert raw.reasoning is None and raw.text.strip() and "</think>" not in raw.text
    cut = pool.get(detected).generate(request)[0]
    assert cut.prompt.endswith("<|im_start|>assistant\n<think>\n") and cut.finish_reason == "length"
    assert (cut.reasoning, cut.text) == (raw.text.strip(), "")       # cut inside the thinking: no answer
    closed = pool.get(load_spec(str(_entry(folder, tmp_path, chat_template_kwargs={"enable_thinking": False}))))
    answered = closed.generate(request)[0]
    assert answered.prompt.endswith("<think>\n\n</think>\n\n") and answered.reasoning is None and answered.text.strip()
    assert pool.loads == 3


@pytest.mark.slow
def test_a_student_without_a_chat_template_answers_trains_and_is_evaluated_on_one_plain_template(smol_spec, tmp_path):
    from transformers import AutoTokenizer

    from mapd.training import TrainConfig, train
    from mapd.training.data import IGNORE, Encoder
    from mapd.training.merge import merge_adapter

    folder = _smol_copy(smol_spec, tmp_path / "smol-plain", None)
    exam = Exam(RunConfig(task="svamp", run_dir=tmp_path / "run", limit=2, num_shards=1,
                          student=str(_entry(folder, tmp_path))))
    exam.run(pool=EnginePool())
    rows = exam.results().to_dicts()
    user = [exam.prompt.render(question=r["question"]) for r in rows]
    assert [r["prompt"] for r in rows] == [f"User:\n{u}\n\nAssistant:\n" for u in user]

    # Training renders the same prompt to the same tokens, and ends the answer with the EOS token.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    example, _ = Encoder(tokenizer, 512).encode("r", "q", "rationale", user[0], "3 + 4 = 7. The answer is 7.")
    n = example.labels.count(IGNORE)
    assert n == rows[0]["prompt_tokens"] and tokenizer.decode(example.input_ids[:n]) == rows[0]["prompt"]
    assert example.input_ids[-1] == tokenizer.eos_token_id

    records = tmp_path / "records.parquet"
    pl.DataFrame({"record_id": ["rationale:t:0", "rationale:t:1"], "question_id": ["q0", "q1"],
                  "kind": ["rationale", "rationale"], "prompt": user,
                  "response": ["The answer is 7.", "The answer is 12."]}).write_parquet(records)
    adapter = train(TrainConfig(base_model=str(folder), records=str(records), out_dir=str(tmp_path / "train"),
                                epochs=1, batch_size=2, max_length=256, lora_r=8, max_steps=1, quantize=False,
                                warmup_ratio=0.0))
    log = [json.loads(x) for x in (tmp_path / "train" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and math.isfinite(log[0]["loss"])

    # The distilled eval answers on the merged model, whose folder has no template either.
    merged = merge_adapter(folder, adapter, tmp_path / "merged", "float32")
    spec = dataclasses.replace(load_spec(str(_entry(folder, tmp_path))), path=str(merged))
    answer = load_engine(spec).generate([Request("q0", (("user", user[0]),), spec.sampling, seed=0)])[0]
    assert answer.prompt == rows[0]["prompt"] and answer.prompt_tokens == rows[0]["prompt_tokens"]


def test_training_renders_records_with_the_students_template_variables(smol_spec, tmp_path):
    """The student entry's chat_template_kwargs reach training (through the train stage's
    config), which renders the prompt part as the engine does; unset, the config's identity is
    what it was before the field existed."""
    from transformers import AutoTokenizer

    from mapd.training import TrainConfig
    from mapd.training.data import IGNORE, Encoder

    folder = _smol_copy(smol_spec, tmp_path / "smol-thinks", OPENING)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for kwargs, tail in ((None, "<think>\n"), ({"enable_thinking": False}, "<think>\n\n</think>\n\n")):
        example, _ = Encoder(tokenizer, 512, kwargs).encode("r", "q", "rationale", "What is 3 + 4?", "7")
        prompt = tokenizer.decode(example.input_ids[:example.labels.count(IGNORE)])
        assert prompt.endswith("<|im_start|>assistant\n" + tail), prompt

    entry = _entry(folder, tmp_path, chat_template_kwargs={"enable_thinking": False})
    train = Graph(RunConfig(task="svamp", run_dir=tmp_path / "run", limit=2, student=str(entry))).one("train")
    assert train.config().chat_template_kwargs == {"enable_thinking": False}
    plain = TrainConfig(base_model=str(folder), records="r", out_dir="o")
    assert "chat_template_kwargs" not in plain.identity("cpu")
    assert dataclasses.replace(plain, chat_template_kwargs={"enable_thinking": False}).identity("cpu") \
        ["chat_template_kwargs"] == {"enable_thinking": False}
