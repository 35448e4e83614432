"""Shared fixtures. Real engines are expensive to start, so each is built once per session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from local_teachers.engine import go_offline, load_engine
from local_teachers.registry import load_spec, require_local

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
    vLLM's CPU attention rejects 16."""
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
    LlamaForCausalLM(config).save_pretrained(out)
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
