"""The combined loss: alpha * L_feedback + (1 - alpha) * L_rationale.

Each term is the mean next-token cross-entropy over the response tokens (labels != -100) of that
kind's rows in the batch. A batch without one kind has no term for it: the missing term
contributes 0 and the present term keeps its own weight (alpha for feedback, 1 - alpha for
rationale). It is NOT renormalised to weight 1: that way alpha stays the weight of a kind in
every batch, and a run whose batches happen to hold one kind each (length grouping makes that
likely) still weighs the kinds alpha : 1 - alpha on average, instead of by how many batches of
each kind there were.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import IGNORE, KINDS


@dataclass
class Loss:
    total: torch.Tensor                     # what is back-propagated
    parts: dict[str, torch.Tensor | None]   # per-kind mean CE, None where the batch has no such row
    tokens: dict[str, int]                  # response tokens per kind


def kind_weights(alpha: float) -> dict[str, float]:
    return {"feedback": alpha, "rationale": 1.0 - alpha}


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions t whose logits predict a target (labels[:, t + 1] != -100) in some row of the
    batch: the LM head runs there alone. Prompt positions have no target, and the (B, T, V) logits
    of every position are most of a step's memory for a large vocabulary (4 sequences x 2,048
    positions x 128k tokens: 1 G logits, and as many gradients)."""
    return (labels[:, 1:] != IGNORE).any(0).nonzero().squeeze(1)


def combined_loss(logits: torch.Tensor, targets: torch.Tensor, kind: torch.Tensor, alpha: float) -> Loss:
    """logits (B, K, V) from a causal LM; targets (B, K): the token each logit predicts, -100 where
    none (labels[:, positions + 1] for logits at ``positions``); kind (B,) indices into KINDS."""
    mask = targets != IGNORE
    # Only the positions with a target: saves the float32 copy of the whole (B, K, V) tensor.
    ce = F.cross_entropy(logits[mask].float(), targets[mask], reduction="none")
    row_kind = kind[:, None].expand_as(targets)[mask]
    weights = kind_weights(alpha)
    total = logits.new_zeros((), dtype=torch.float32)
    parts, tokens = {}, {}
    for index, name in enumerate(KINDS):
        sel = row_kind == index
        tokens[name] = int(sel.sum())
        if tokens[name] == 0:
            parts[name] = None
            continue
        parts[name] = ce[sel].mean()
        total = total + weights[name] * parts[name]
    return Loss(total, parts, tokens)
