"""Shared fixtures. Real engines are expensive to start, so each is built once per session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from mapd.local_teachers.engine import go_offline
from mapd.local_teachers.pool import load_engine
from mapd.local_teachers.registry import load_spec, require_local

go_offline()
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smol_spec():
    spec = load_spec("smollm2-135m-instruct")
    require_local(spec)   # `make test` converts it first
    return spec


@pytest.fixture(scope="session")
def vllm_engine(smol_spec):
    return load_engine(smol_spec.with_engine("vllm"))


@pytest.fixture(scope="session")
def hf_engine(smol_spec):
    return load_engine(smol_spec.with_engine("transformers"))


@pytest.fixture(scope="session")
def tiny_model(smol_spec, tmp_path_factory) -> Path:
    """A random 2-layer Llama (~16 MB) with SmolLM2's tokenizer and chat template: loads in
    about a second, for tests of the bookkeeping around real engines. Head size 64 because
    vLLM's CPU attention rejects 16. Its generation config suppresses the blank tokens: greedy,
    it would write only line breaks, which the committee drops as empty (nothing to train on)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smol_spec.path)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=1, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.suppress_tokens = [i for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip()]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_spec_file(tiny_model, tmp_path_factory) -> Path:
    """A registry YAML for the tiny model on the transformers engine, greedy, short answers."""
    path = tmp_path_factory.mktemp("registry") / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny-llama", "path": str(tiny_model), "engine": "transformers", "dtype": "float32",
        "gpus": 0, "max_model_len": 1024, "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8},
    }))
    return path


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A writable copy of the bundled task data, for tests that damage it."""
    dst = tmp_path / "data"
    shutil.copytree(ROOT / "batch" / "data", dst)
    return dst


@pytest.fixture(scope="session")
def vllm_lora_engine(smol_spec):
    """A second vLLM engine on SmolLM2 with LoRA enabled, as the eval stage loads it."""
    from dataclasses import replace

    return load_engine(replace(smol_spec.with_engine("vllm"),
                               vllm={**smol_spec.vllm, "enable_lora": True, "max_lora_rank": 64}))


@pytest.fixture(scope="session")
def random_adapter(smol_spec, tmp_path_factory) -> Path:
    """A peft LoRA adapter with random (non-zero) weights on every linear layer of SmolLM2."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("random-adapter")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smol_spec.path, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def short_student(smol_spec, tmp_path_factory) -> Path:
    """The real student with answers capped at 64 new tokens, to keep real-model tests short."""
    path = tmp_path_factory.mktemp("registry-short") / "smollm2-short.yaml"
    raw = yaml.safe_load(Path(smol_spec.source).read_text())
    raw["sampling"]["max_tokens"] = 64
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The real one-node SLURM cluster of tests/slurm_cluster.py (2 CPUs, 2 fake GPUs), started
    once for every test that submits jobs."""
    from slurm_cluster import LocalCluster, why_cannot_start

    why = why_cannot_start()
    if why:
        pytest.skip(why)
    with LocalCluster(tmp_path_factory.mktemp("slurm-cluster"), cpus=2, gpus=2) as c:
        yield c


@pytest.fixture
def env(cluster):
    """The environment of `mapd` commands and jobs on that cluster (one thread per process: the
    tests run jobs side by side)."""
    return {**cluster.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}
