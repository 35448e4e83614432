"""A model's identity is its name in the registry and its content, not its path: the same
weights under another folder or mount point keep every output; other content redoes what used it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from safetensors.numpy import save_file

from mapd.batch.config import RunConfig
from mapd.batch.graph import Graph
from mapd.batch.local import run_local
from mapd.cli import main
from mapd.local_teachers.fingerprint import model_fingerprint
from mapd.local_teachers.registry import load_spec
from mapd.local_teachers.fingerprint import file_sha256
from fakes import ScriptedEngine, ScriptedPool

TEACHERS = ("tiny-a", "tiny-b")


def _model(folder: Path) -> Path:
    """A model folder as the fingerprint sees it: config, tokenizer, one small safetensors file."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1}}}))
    save_file({"embed": np.zeros((2, 4), np.float32)}, folder / "model.safetensors")
    return folder


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _spec_file(folder: Path, name: str, path: str) -> str:
    file = folder / f"{name}.yaml"
    file.write_text(yaml.safe_dump({"name": name, "path": path, "engine": "transformers", "dtype": "float32",
                                    "gpus": 0, "max_model_len": 1024,
                                    "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8}}))
    return str(file)


def test_the_fingerprint_is_the_content_not_the_path(tmp_path):
    base = _model(tmp_path / "base")
    same = model_fingerprint(base)
    (tmp_path / "elsewhere").mkdir()
    moved = base.rename(tmp_path / "elsewhere" / "renamed")
    assert model_fingerprint(moved) == same
    assert model_fingerprint(_copy(moved, tmp_path / "copy")) == same
    (moved / "README.md").write_text("notes")                 # a file that decides nothing
    assert model_fingerprint(moved) == same

    config = _copy(moved, tmp_path / "config")
    (config / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    tokenizer = _copy(moved, tmp_path / "tokenizer")
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end|>"}))
    template = _copy(moved, tmp_path / "template")
    (template / "chat_template.jinja").write_text("{{ messages }}")
    # A tensor renamed: the file keeps its size, only its header differs.
    header = _copy(moved, tmp_path / "header")
    save_file({"embex": np.zeros((2, 4), np.float32)}, header / "model.safetensors")
    assert (header / "model.safetensors").stat().st_size == (moved / "model.safetensors").stat().st_size
    shard = _copy(moved, tmp_path / "shard")
    save_file({"lm_head": np.zeros((2, 4), np.float32)}, shard / "model-00002-of-00002.safetensors")
    prints = [model_fingerprint(f) for f in (config, tokenizer, template, header, shard)]
    assert len({same, *prints}) == 6, prints


def test_a_missing_folder_or_a_broken_header_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder at .*nowhere"):
        model_fingerprint(tmp_path / "nowhere")
    spec = load_spec(_spec_file(tmp_path, "gone", str(tmp_path / "gone")))
    with pytest.raises(FileNotFoundError, match=r"model 'gone' \(.*gone.yaml\): no model folder at"):
        spec.identity()
    broken = _model(tmp_path / "broken")
    (broken / "model.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="model.safetensors: not a safetensors file"):
        model_fingerprint(broken)


def test_a_spec_identity_is_its_name_settings_and_content(tmp_path):
    a = _model(tmp_path / "a")
    here = load_spec(_spec_file(tmp_path, "m", str(a)))
    (tmp_path / "other").mkdir()
    there = load_spec(_spec_file(tmp_path / "other", "m", str(_copy(a, tmp_path / "b"))))
    assert here.path != there.path and here.identity() == there.identity()
    renamed = load_spec(_spec_file(tmp_path, "n", str(a)))
    assert renamed.identity() != here.identity()
    assert here.with_engine("vllm").identity() != here.identity()


# ---------------------------------------------------------------- a whole run

def _answer(request, adapter):
    """Every model: a final answer and a score, so every rationale is accepted."""
    return f"For {request.id}: the answer is 7. Score: [4]"


def _train(cfg):
    """Training stands in: an adapter file, and the card that says what it was trained with."""
    adapter = Path(cfg.out_dir) / "adapter"
    adapter.mkdir(parents=True)
    save_file({"lora": np.zeros(2, np.float32)}, adapter / "adapter_model.safetensors")
    card = {"config_identity": cfg.identity(), "dataset": {"sha256": file_sha256(cfg.records)}}
    (adapter / "card.json").write_text(json.dumps(card))
    return adapter


def _files(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): file_sha256(p) for p in sorted(run.rglob("*")) if p.is_file()}


def test_moving_the_model_folder_keeps_every_stage_done(tmp_path, monkeypatch):
    monkeypatch.setattr("mapd.training.train", _train)
    monkeypatch.setenv("MAPD_CACHE", str(tmp_path / "cache"))
    _model(tmp_path / "cache" / "models" / "student")
    _model(tmp_path / "cache" / "models" / "teacher")
    student = _spec_file(tmp_path, "student", "${MAPD_CACHE}/models/student")
    teachers = tuple(_spec_file(tmp_path, name, "${MAPD_CACHE}/models/teacher") for name in TEACHERS)
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "run", limit=4, num_shards=2, student=student,
                    teachers=teachers, policy="paper", selection="all")
    cfg.save()
    run_local(Graph(cfg), ScriptedPool(ScriptedEngine(_answer)))
    before = _files(cfg.run_dir)

    # Another mount point: the run's entries name the folders through MAPD_CACHE.
    (tmp_path / "cache").rename(tmp_path / "mounted")
    missing = CliRunner().invoke(main, ["plan", "--run-dir", str(cfg.run_dir)])
    assert missing.exit_code == 1 and f"no model folder at {tmp_path / 'cache'}" in missing.output, missing.output
    monkeypatch.setenv("MAPD_CACHE", str(tmp_path / "mounted"))
    plan = dict(Graph(cfg).plan())
    assert not any(plan.values()), plan
    figures = run_local(Graph(cfg), ScriptedPool(ScriptedEngine(_answer)))
    assert {f["stage"]: f["shards_run"] for f in figures} == dict.fromkeys(plan, 0)
    assert _files(cfg.run_dir) == before

    # The teachers' content changes: what they wrote, and all that read it, is redone.
    (tmp_path / "mounted" / "models" / "teacher" / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    plan = dict(Graph(cfg).plan())
    assert {key for key, reason in plan.items() if reason} == {
        "teach/tiny-a", "teach/tiny-b", "review/tiny-a", "review/tiny-b", "dataset", "train", "eval/distilled"}, plan
    assert plan["teach/tiny-a"].startswith("2/2 shards written by another configuration (model_identity: ")
    # The student's content changes: the exam and both evals too, and training on its own.
    (tmp_path / "mounted" / "models" / "student" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    run_local(Graph(cfg), ScriptedPool(ScriptedEngine(_answer)), through="dataset")
    plan = dict(Graph(cfg).plan())
    assert {key for key, reason in plan.items() if reason} == {"train", "eval/base", "eval/distilled"}, plan
    assert plan["train"] == "trained with other settings"
