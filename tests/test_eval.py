"""EVAL and the merged student. On CPU the distilled eval answers with the adapter merged into a
copy of the base, made when an engine first loads it; merged or not (vLLM's LoRA path as on GPUs,
transformers + peft), the real SmolLM2 gives the same greedy answers, and the adapter changes
them. `mapd export-model` writes the same merge where the user says."""
import json
import os
import shutil
import time
from dataclasses import replace

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mapd.batch.config import RunConfig
from mapd.batch.eval import Eval, results_table
from mapd.batch.exam import Exam
from mapd.batch.prompts import load_prompt
from mapd.batch.tasks import get_task
from mapd.cli import main
from mapd.local_teachers.engine import Request
from mapd.local_teachers.fingerprint import file_sha256
from mapd.local_teachers.pool import EnginePool, load_engine
from mapd.local_teachers.registry import Sampling, load_spec
from mapd.training.merge import merge_adapter

from fakes import ScriptedEngine, ScriptedPool


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model, tmp_path_factory):
    """A LoRA adapter with random (non-zero) weights on every linear layer of the tiny model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny-adapter")
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def kept():
    """vLLM engines these tests load, kept to the end of the session: closing (or collecting) an
    in-process vLLM engine tears down the distributed state every other one in the process uses."""
    return []


def _changed(adapter, to, weights=None, **config):
    """A copy of ``adapter`` with its weights scaled by ``weights`` or ``config`` set in its
    adapter_config.json."""
    shutil.copytree(adapter, to)
    if weights is not None:
        tensors = load_file(adapter / "adapter_model.safetensors")
        save_file({k: v * weights for k, v in tensors.items()}, to / "adapter_model.safetensors")
    if config:
        raw = json.loads((adapter / "adapter_config.json").read_text())
        (to / "adapter_config.json").write_text(json.dumps({**raw, **config}))
    return to


def _on_gpus(spec_file, folder):
    """The same model entry with gpus: 1, whose distilled eval takes vLLM's LoRA path."""
    raw = yaml.safe_load(spec_file.read_text())
    path = folder / f"gpu-{spec_file.name}"
    path.write_text(yaml.safe_dump({**raw, "gpus": 1}))
    return path


def _trained(cfg, adapter):
    """A run whose training is done: its config saved, ``adapter`` as its adapter, with a card."""
    cfg.save()
    trained = cfg.run_dir / "train" / "adapter"
    shutil.copytree(adapter, trained)
    (trained / "card.json").write_text("{}")
    return cfg.run_dir


def test_eval_identity_follows_the_adapter_and_how_it_is_applied(tmp_path, tiny_spec_file, tiny_adapter):
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=2, student=str(tiny_spec_file))
    base, merged = Eval(cfg, "base").identity(0), Eval(cfg, "distilled", tiny_adapter).identity(0)
    assert base["adapter_sha256"] is None and "adapter_applied" not in base and base["variant"] == "base"
    assert merged["adapter_sha256"] == file_sha256(tiny_adapter / "adapter_model.safetensors")
    assert merged["adapter_applied"] == "merged" and merged["split"] == "test"
    # Merged on CPU: the plain student and the adapter's checksums name the merged model.
    assert merged["model_identity"] == base["model_identity"]
    assert not (cfg.run_dir / "eval").exists()        # naming it makes nothing
    # Other weights, or only another lora_alpha (the scale of the update), are another model.
    heavier = Eval(cfg, "distilled", _changed(tiny_adapter, tmp_path / "heavier", weights=2.0)).identity(0)
    louder = Eval(cfg, "distilled", _changed(tiny_adapter, tmp_path / "louder", lora_alpha=32)).identity(0)
    assert heavier["adapter_sha256"] != merged["adapter_sha256"]
    assert heavier["adapter_config_sha256"] == merged["adapter_config_sha256"]
    assert louder["adapter_config_sha256"] != merged["adapter_config_sha256"]
    assert louder["adapter_sha256"] == merged["adapter_sha256"]
    # The base variant loads the exam's model as it is: no LoRA-enabled engine.
    exam = Exam(cfg).spec
    assert replace(Eval(cfg, "base").spec, sampling=exam.sampling) == exam
    # On GPUs: vLLM's LoRA path, a LoRA-enabled engine.
    gpu = replace(cfg, student=str(_on_gpus(tiny_spec_file, tmp_path)))
    lora = Eval(gpu, "distilled", tiny_adapter)
    assert lora.merged is None and lora.spec.vllm["enable_lora"] and "enable_lora" not in Eval(gpu, "base").spec.vllm
    assert lora.identity(0)["adapter_applied"] == "lora"
    with pytest.raises(ValueError, match="needs an adapter"):
        Eval(cfg, "distilled")


def test_a_later_round_exam_answers_on_the_copy_its_previous_round_merged(tmp_path, tiny_spec_file, tiny_adapter):
    """On CPU round r's exam takes round r-1's adapter merged, in the copy round r-1's distilled
    eval made (one merge, no LoRA-enabled engine)."""
    first = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=2, student=str(tiny_spec_file))
    adapter = _trained(first, tiny_adapter) / "train" / "adapter"
    exam = Exam(replace(first, run_dir=first.run_dir / "round-2", init_adapter=str(adapter)))
    assert exam.merged.path == Eval(first, "distilled", adapter).merged.path == str(first.run_dir / "eval" / "merged-model")
    assert exam.identity(0)["adapter_applied"] == "merged" and "enable_lora" not in exam.spec.vllm


def test_the_merged_model_is_made_when_first_loaded_and_kept_for_the_same_adapter(tmp_path, tiny_spec_file,
                                                                                 tiny_model, tiny_adapter):
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=2, student=str(tiny_spec_file))
    folder = cfg.run_dir / "eval" / "merged-model"
    # A scripted engine loads nothing: nothing is merged.
    Eval(replace(cfg, run_dir=tmp_path / "scripted"), "distilled", tiny_adapter).run(
        pool=ScriptedPool(ScriptedEngine(lambda r, adapter: "7")))
    assert not (tmp_path / "scripted" / "eval" / "merged-model").exists()

    with EnginePool() as pool:
        figures = Eval(cfg, "distilled", tiny_adapter).run(pool=pool)
        assert pool.loads == 1 and pool.engine.spec.path == str(folder) and figures["shards_run"] == 1
        with pytest.raises(ValueError, match="holds the adapter .* merged in, not none"):
            pool.engine.generate([])
    record = json.loads((folder / "merged.json").read_text())
    assert record["adapter_sha256"] == file_sha256(tiny_adapter / "adapter_model.safetensors")
    assert record["dtype"] == "float32"
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    with EnginePool() as pool:                      # every shard done: nothing loads
        assert Eval(cfg, "distilled", tiny_adapter).run(pool=pool)["shards_run"] == 0 and pool.loads == 0

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    merge_adapter(tiny_model, tiny_adapter, folder, "float32")
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp      # the same merge: kept
    other = _changed(tiny_adapter, tmp_path / "other", weights=2.0)
    killed, running = folder.with_name(".merged-model.0123456789ab.tmp"), folder.with_name(".merged-model.ba98.tmp")
    for leftover in (killed, running):
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(killed, (two_hours_ago, two_hours_ago))
    merge_adapter(tiny_model, other, folder, "float32")
    assert json.loads((folder / "merged.json").read_text())["adapter_sha256"] != record["adapter_sha256"]
    # its own temporary renamed into place, a killed merge's deleted, one still being written kept
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == [running.name]


def test_export_model_refuses_in_one_line_then_writes_the_merged_student(tmp_path, tiny_spec_file, tiny_adapter):
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=2, student=str(tiny_spec_file))
    cfg.save()
    out = tmp_path / "export"
    export = ["export-model", "--run-dir", str(cfg.run_dir), "--out", str(out)]
    untrained = CliRunner().invoke(main, export)
    assert untrained.exit_code == 1 and "no trained adapter yet; run `mapd train" in untrained.output
    assert len(untrained.output.strip().splitlines()) == 1
    _trained(cfg, tiny_adapter)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    taken = CliRunner().invoke(main, export)
    assert taken.exit_code == 1 and "exists and is not empty; pass --force" in taken.output
    assert (out / "notes.txt").is_file()
    forced = CliRunner().invoke(main, [*export, "--force"])
    assert forced.exit_code == 0, forced.output
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    # It answers as the adapter does.
    spec = load_spec(str(tiny_spec_file))
    requests = [Request(str(i), (("user", f"What is {i} + {i}?"),), spec.sampling, seed=0) for i in range(3)]
    exported, peft = load_engine(replace(spec, path=str(out))), load_engine(spec)
    assert [c.text for c in exported.generate(requests)] == \
        [c.text for c in peft.generate(requests, adapter=str(tiny_adapter))]


@pytest.mark.slow      # the real SmolLM2, vLLM and peft
def test_merged_and_unmerged_the_adapter_gives_the_same_answers(tmp_path, random_adapter, short_student,
                                                                 vllm_engine, vllm_lora_engine, hf_engine, kept):
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "cpu", limit=4, num_shards=2, student=str(short_student))
    base, merged = Eval(cfg, "base"), Eval(cfg, "distilled", random_adapter)
    base.run(pool=ScriptedPool(vllm_engine))      # the plain engine, as the exam loaded it
    pool = EnginePool()
    kept.append(pool)
    merged.run(pool=pool)
    assert pool.loads == 1 and pool.engine.spec.path == str(cfg.run_dir / "eval" / "merged-model")
    # Unmerged: vLLM's LoRA path (a GPU entry takes it) and transformers + peft.
    gpu = replace(cfg, student=str(_on_gpus(short_student, tmp_path)))
    unmerged = []
    for name, engine in [("lora", vllm_lora_engine), ("peft", hf_engine)]:
        stage = Eval(replace(gpu, run_dir=tmp_path / name), "distilled", random_adapter)
        stage.run(pool=ScriptedPool(engine))
        unmerged.append(stage.results()["completion"].to_list())
    answers = merged.results()["completion"].to_list()
    assert unmerged == [answers, answers]
    assert base.results()["completion"].to_list() != answers
    rows = base.results()
    assert rows["question_id"].to_list() == [q.id for q in base.questions] and rows.height == 4
    assert all(qid in {q.id for q in base.task.load("test")} for qid in rows["question_id"])
    result = results_table(base, merged)
    assert result["test_size"] == 4 and result["student"] == "smollm2-135m-instruct"
    assert result["base_accuracy"] == (rows["verdict"] == "correct").mean()
    assert json.loads((cfg.run_dir / "eval" / "results.json").read_text()) == result
    table = (cfg.run_dir / "eval" / "results.md").read_text()
    assert table.startswith("| task | student | round | base accuracy") and "| svamp | smollm2-135m-instruct | 1 |" in table


@pytest.mark.slow      # the real SmolLM2, vLLM and peft
def test_the_exported_student_answers_as_the_adapter_in_vllm_and_transformers(tmp_path, random_adapter,
                                                                               short_student, hf_engine, kept):
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=4, student=str(short_student))
    out = tmp_path / "export"
    done = CliRunner().invoke(main, ["export-model", "--run-dir", str(_trained(cfg, random_adapter)), "--out", str(out)])
    assert done.exit_code == 0, done.output
    task = get_task("svamp")
    prompt = load_prompt("student_answer", task.family)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=64)
    requests = [Request(q.id, (("user", prompt.render(question=q.text)),), greedy, seed=0)
                for q in task.load("test")[:4]]
    expected = [c.text for c in hf_engine.generate(requests, adapter=str(random_adapter))]
    spec = replace(load_spec(str(short_student)), path=str(out))
    for backend in ("vllm", "transformers"):
        kept.append(load_engine(spec.with_engine(backend)))
        assert [c.text for c in kept[-1].generate(requests)] == expected, backend
