"""EVAL on the real SmolLM2 with a real peft adapter: vLLM's LoRA path and transformers + peft
give the same greedy answers, and the adapter changes them."""
from dataclasses import replace

import json

import pytest

from mapd.batch.config import RunConfig
from mapd.batch.eval import Eval, results_table

from fakes import ScriptedPool

pytestmark = pytest.mark.slow    # the real SmolLM2 (the adapter is made on it), vLLM and peft


def _evaluate(cfg, adapter, engine):
    base, distilled = Eval(cfg, "base"), Eval(cfg, "distilled", adapter)
    for stage in (base, distilled):
        stage.run(pool=ScriptedPool(engine))
    return base, distilled


def test_vllm_lora_and_peft_agree_and_the_adapter_matters(tmp_path, random_adapter, short_student,
                                                          vllm_lora_engine, hf_engine):
    cfg = RunConfig(task="svamp", run_dir=tmp_path / "vllm", limit=4, num_shards=2, student=str(short_student))
    v_base, v_dist = _evaluate(cfg, random_adapter, vllm_lora_engine)
    h_base, h_dist = _evaluate(replace(cfg, run_dir=tmp_path / "hf"), random_adapter, hf_engine)
    for v, h in [(v_base, h_base), (v_dist, h_dist)]:
        assert v.results()["completion"].to_list() == h.results()["completion"].to_list()
    base, dist = v_base.results(), v_dist.results()
    assert base["question_id"].to_list() == [q.id for q in v_base.questions] and base.height == 4
    assert all(qid in {q.id for q in v_base.task.load("test")} for qid in base["question_id"])
    assert base["completion"].to_list() != dist["completion"].to_list()
    result = results_table(v_base, v_dist)
    assert result["test_size"] == 4 and result["student"] == "smollm2-135m-instruct"
    assert result["base_accuracy"] == (base["verdict"] == "correct").mean()
    written = json.loads((tmp_path / "vllm" / "eval" / "results.json").read_text())
    assert written == result
    table = (tmp_path / "vllm" / "eval" / "results.md").read_text()
    assert table.startswith("| task | student | round | base accuracy") and "| svamp | smollm2-135m-instruct | 1 |" in table


def test_eval_identity_follows_the_adapter_file(tmp_path, random_adapter):
    cfg = RunConfig(task="svamp", run_dir=tmp_path, limit=2)
    a = Eval(cfg, "distilled", random_adapter).identity(0)
    assert a["adapter_sha256"] and a["split"] == "test" and a["variant"] == "distilled"
    assert Eval(cfg, "base").identity(0)["adapter_sha256"] is None
    with pytest.raises(ValueError, match="needs an adapter"):
        Eval(cfg, "distilled")
