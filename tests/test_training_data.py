"""Training data: records, masking, truncation, batches (length-grouped, paired), the combined loss."""
from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
import torch

from mapd.training import RecordsError, TrainConfig, train
from mapd.training.data import (IGNORE, KINDS, Example, collate, encode_records, load_records, padding_fraction,
                                pair_units, plan_batches)
from mapd.training.loss import combined_loss, target_positions

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT / "batch" / "data" / "gsm8k" / "train.jsonl"


def write_records(path: Path, n: int, feedback_every: int = 3, start: int = 0) -> Path:
    """Realistic records for n questions of GSM8K train: each a rationale (question -> worked
    answer); every feedback_every-th also a feedback (question + a wrong earlier answer -> a
    comment) of the same question id, so the two pair. Extra provenance columns, as the stage writes."""
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[start:start + n]]
    records = []
    for i, r in enumerate(rows):
        kinds = {"rationale": (r["question"], r["answer"])}
        if i % feedback_every == 0:
            kinds["feedback"] = (
                f"{r['question']}\n\nYour earlier answer was:\nThe answer is 3.\n\nThe correct answer is "
                f"{r['answer'].split('####')[-1].strip()}. Explain what went wrong in your earlier answer.",
                "The earlier answer skipped steps. " + r["answer"].split("####")[0].strip())
        records += [{"record_id": f"{kind}:t:{i}", "question_id": f"gsm8k-{i}", "kind": kind, "prompt": prompt,
                     "response": response, "teacher": "t", "mean_score": 4.5}
                    for kind, (prompt, response) in kinds.items()]
    pl.DataFrame(records).write_parquet(path)
    return path


@pytest.fixture(scope="module")
def smol_tokenizer(smol_spec):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_spec.path)


# ---------------------------------------------------------------- masking (real tokenizer)

def test_masking_on_real_records(smol_tokenizer, tmp_path):
    tok = smol_tokenizer
    df = load_records(write_records(tmp_path / "r.parquet", 6))
    encoded = encode_records(df, tok, max_length=512)
    assert encoded.counts()["truncated"] == 0 and encoded.counts()["skipped"] == 0
    examples = encoded.examples[:4]
    assert len({len(e) for e in examples}) > 1, "want rows of different lengths to see padding"
    batch = collate(examples, pad_id=tok.pad_token_id)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    width = ids.shape[1]
    for row, (e, rec) in enumerate(zip(examples, df.head(4).iter_rows(named=True))):
        n = len(e)
        # right padding; the mask is zero exactly on the padding
        assert mask[row].tolist() == [1] * n + [0] * (width - n)
        assert (labels[row, n:] == IGNORE).all()
        # the prompt part is the chat template with the generation prompt, all masked
        user = [{"role": "user", "content": rec["prompt"]}]
        prompt_ids = tok(tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False).input_ids
        assert ids[row, :len(prompt_ids)].tolist() == prompt_ids
        assert (labels[row, :len(prompt_ids)] == IGNORE).all()
        # the targets are the response tokens and the end-of-turn token, unmasked
        targets = labels[row, len(prompt_ids):n]
        assert (targets != IGNORE).all()
        assert tok.decode(targets) == rec["response"] + "<|im_end|>"
        # the whole row is the template's rendering of the conversation (no second BOS, no extras)
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": rec["response"]}], tokenize=False)
        assert tok.decode(ids[row, :n]) == full.rstrip("\n")
        assert batch["kind"][row].item() == KINDS.index(rec["kind"])


def test_truncation_and_skipping(smol_tokenizer, tmp_path):
    df = load_records(write_records(tmp_path / "r.parquet", 6))
    full = encode_records(df, smol_tokenizer, max_length=512)
    prompt_lengths = [sum(t == IGNORE for t in e.labels) for e in full.examples]
    limit = sorted(prompt_lengths)[2] + 5      # the two or three longest prompts no longer fit
    cut = encode_records(df, smol_tokenizer, max_length=limit)
    skipped = [e.record_id for e, p in zip(full.examples, prompt_lengths) if p >= limit]
    assert cut.skipped == skipped and skipped
    assert all(len(e) <= limit for e in cut.examples)
    for e in cut.examples:       # cut from the response's end: the prompt and the response's start stay
        whole = next(f for f in full.examples if f.record_id == e.record_id)
        assert e.input_ids == whole.input_ids[:len(e)]
        assert e.truncated == (len(whole) > limit)
    assert cut.counts()["truncated"] == sum(e.truncated for e in cut.examples) > 0
    with pytest.raises(RecordsError, match="raise max_length"):
        encode_records(df, smol_tokenizer, max_length=10)


def test_zero_records_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.parquet"
    pl.DataFrame(schema={"record_id": pl.String, "question_id": pl.String, "kind": pl.String, "prompt": pl.String,
                         "response": pl.String, "teacher": pl.String}).write_parquet(empty)
    cfg = TrainConfig(base_model="/nonexistent", records=str(empty), out_dir=str(tmp_path / "out"))
    with pytest.raises(RecordsError, match="zero records"):
        train(cfg)
    with pytest.raises(RecordsError, match="no records file"):
        train(replace(cfg, records=str(tmp_path / "missing.parquet")))
    pl.DataFrame({"record_id": ["a"], "kind": ["rationale"], "prompt": ["p"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(RecordsError, match="missing column"):
        train(replace(cfg, records=str(tmp_path / "bad.parquet")))
    assert not (tmp_path / "out" / "adapter").exists()


# ---------------------------------------------------------------- batching

def test_length_grouped_batches():
    lengths = [(i * 37) % 200 + 20 for i in range(403)]
    grouped = plan_batches(lengths, 8, seed=1, epoch=0)
    plain = plan_batches(lengths, 8, seed=1, epoch=0, group_by_length=False)
    for plan in (grouped, plain):
        assert sorted(i for b in plan for i in b) == list(range(403))
        assert sum(len(b) != 8 for b in plan) == 1 and len(plan) == math.ceil(403 / 8)
    assert grouped == plan_batches(lengths, 8, seed=1, epoch=0)          # seeded: the same plan again
    assert grouped != plan_batches(lengths, 8, seed=1, epoch=1)          # another epoch: another order
    assert padding_fraction(grouped, lengths) < 0.1 < padding_fraction(plain, lengths)
    # batch order is shuffled, not sorted by length
    maxima = [max(lengths[i] for i in b) for b in grouped]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_unpaired_plan_is_the_plan_before_pairing():
    """Pinned plans of the code before pairing existed: pairing off (every example its own unit)
    and records without pairs (the no-feedback ablation) batch exactly as before."""
    lengths = [30, 12, 45, 7, 30, 22, 18, 40, 9, 27, 33]
    alone = [[i] for i in range(len(lengths))]
    for units in (None, alone):
        assert plan_batches(lengths, 3, 5, 1, True, units) == [[4, 0, 9], [5, 6, 1], [2, 7, 10], [8, 3]]
        assert plan_batches(lengths, 3, 5, 1, False, units) == [[2, 5, 10], [1, 8, 3], [7, 6, 4], [0, 9]]


def _examples(kinds_by_question: dict[str, str], seed: int = 0) -> list[Example]:
    """Examples of random lengths, per question one per letter: f = feedback, r = rationale."""
    rng = random.Random(seed)
    return [Example(f"{kind}:{q}:{j}", q, KINDS.index(kind), [0] * rng.randint(20, 400), [])
            for q, kinds in kinds_by_question.items()
            for j, kind in enumerate({"f": "feedback", "r": "rationale"}[c] for c in kinds)]


def test_paired_batches_hold_whole_questions(smol_tokenizer, tmp_path):
    df = load_records(write_records(tmp_path / "r.parquet", 62, feedback_every=1))
    examples = encode_records(df, smol_tokenizer, max_length=512).examples
    lengths = [len(e) for e in examples]
    units = pair_units(examples)
    assert len(units) == 62 and all(len(u) == 2 for u in units)
    for grouped in (True, False):
        plan = plan_batches(lengths, 4, 731, 0, grouped, units)
        assert sorted(i for b in plan for i in b) == list(range(124))
        assert [len(b) for b in plan].count(8) == len(plan) - 1      # 4 pairs a batch: batch_size counts pairs
        for b in plan:
            assert {examples[i].kind for i in b} == {0, 1}                # both terms in every step
            questions = [examples[i].question_id for i in b]
            assert all(questions.count(q) == 2 for q in questions)      # a question's two records together
        assert plan == plan_batches(lengths, 4, 731, 0, grouped, units)
        assert plan != plan_batches(lengths, 4, 731, 1, grouped, units)
    unpaired = plan_batches(lengths, 8, 731, 0)
    assert sum(len({examples[i].kind for i in b}) == 1 for b in unpaired) > 0   # what pairing fixes
    assert padding_fraction(plan_batches(lengths, 4, 731, 0, True, units), lengths) < padding_fraction(
        plan_batches(lengths, 4, 731, 0, False, units), lengths)


def test_pairing_edge_cases():
    """Several of a kind: max(n, m) pairs, the shorter list cycled. One kind only: lone records,
    batched among themselves; the no-feedback ablation is all lone records."""
    examples = _examples({"a": "frrr", "b": "ffr", "c": "r", "d": "f", "e": "fr", "g": "rr"})
    assert pair_units(examples) == [[0, 1], [0, 2], [0, 3], [4, 6], [5, 6], [7], [8], [9, 10], [11], [12]]
    lengths = [len(e) for e in examples]
    for grouped in (True, False):
        plan = plan_batches(lengths, 2, 3, 0, grouped, pair_units(examples))
        assert sorted({i for b in plan for i in b}) == list(range(len(examples)))   # every record trained on
        assert sorted(len(b) for b in plan) == [2, 2, 4, 4, 4]      # 6 pairs, 4 lone records, 2 units a batch
        assert all({examples[i].kind for i in b} == {0, 1} for b in plan if len(b) == 4)
    ablation = _examples({f"q{i}": "r" for i in range(30)})
    lengths = [len(e) for e in ablation]
    assert pair_units(ablation) == [[i] for i in range(30)]
    assert plan_batches(lengths, 4, 731, 2, True, pair_units(ablation)) == plan_batches(lengths, 4, 731, 2)


# ---------------------------------------------------------------- the combined loss

def _hand_ce(logits, labels, rows):
    """Mean CE over the target tokens of the given rows, by hand from log-softmax."""
    values = []
    for r in rows:
        for t in range(labels.shape[1] - 1):
            target = labels[r, t + 1].item()
            if target != IGNORE:
                values.append(-torch.log_softmax(logits[r, t].double(), -1)[target])
    return torch.stack(values).mean()


def _loss(logits, labels, kind, alpha):
    """The loss as training takes it: logits at the target positions alone."""
    positions = target_positions(labels)
    return combined_loss(logits[:, positions], labels[:, positions + 1], kind, alpha)


def test_combined_loss_matches_hand_mix():
    torch.manual_seed(3)
    logits = torch.randn(4, 7, 13)
    labels = torch.randint(0, 13, (4, 7))
    labels[:, :3] = IGNORE                  # prompt
    labels[1, 5:] = IGNORE                  # padding
    labels[3, 4:] = IGNORE
    kind = torch.tensor([0, 1, 1, 0])       # feedback, rationale, rationale, feedback
    l_fb, l_ra = _hand_ce(logits, labels, [0, 3]), _hand_ce(logits, labels, [1, 2])
    assert not torch.isclose(l_fb, l_ra)
    assert target_positions(labels).tolist() == [2, 3, 4, 5]     # the prompt's first 2 logits predict no target
    for alpha in (0.5, 0.2):
        loss = _loss(logits, labels, kind, alpha)
        torch.testing.assert_close(loss.total.double(), alpha * l_fb + (1 - alpha) * l_ra)
        torch.testing.assert_close(loss.parts["feedback"].double(), l_fb)
        torch.testing.assert_close(loss.parts["rationale"].double(), l_ra)
        assert loss.tokens == {"feedback": int((labels[[0, 3], 1:] != IGNORE).sum()),
                               "rationale": int((labels[[1, 2], 1:] != IGNORE).sum())}
    # a token-level mean over the whole batch would weigh the kinds by token counts instead
    assert not torch.isclose(_loss(logits, labels, kind, 0.5).total.double(),
                             _hand_ce(logits, labels, [0, 1, 2, 3]))


def test_one_kind_batch_keeps_its_weight():
    """The missing kind contributes 0; the present kind keeps its weight (not renormalised to 1)."""
    torch.manual_seed(4)
    logits = torch.randn(2, 6, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 6))
    labels[:, :2] = IGNORE
    alpha = 0.3
    only_ra = _loss(logits, labels, torch.tensor([1, 1]), alpha)
    assert only_ra.parts["feedback"] is None and only_ra.tokens["feedback"] == 0
    torch.testing.assert_close(only_ra.total.double(), (1 - alpha) * _hand_ce(logits.detach(), labels, [0, 1]))
    only_fb = _loss(logits, labels, torch.tensor([0, 0]), alpha)
    torch.testing.assert_close(only_fb.total.double(), alpha * _hand_ce(logits.detach(), labels, [0, 1]))
    only_fb.total.backward()
    assert logits.grad.abs().sum() > 0
