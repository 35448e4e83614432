"""Training: masking, the combined loss, batching, exact kill & resume, the card, the adapter."""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from mapd.training import PRESETS, RecordsError, TrainConfig, preset, train
from mapd.training.data import (IGNORE, KINDS, Example, collate, encode_records, load_records, padding_fraction,
                                pair_units, plan_batches)
from mapd.training.loss import combined_loss
from mapd.training.qlora import make_optimizer

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
    for alpha in (0.5, 0.2):
        loss = combined_loss(logits, labels, kind, alpha)
        torch.testing.assert_close(loss.total.double(), alpha * l_fb + (1 - alpha) * l_ra)
        torch.testing.assert_close(loss.parts["feedback"].double(), l_fb)
        torch.testing.assert_close(loss.parts["rationale"].double(), l_ra)
        assert loss.tokens == {"feedback": int((labels[[0, 3], 1:] != IGNORE).sum()),
                               "rationale": int((labels[[1, 2], 1:] != IGNORE).sum())}
    # a token-level mean over the whole batch would weigh the kinds by token counts instead
    assert not torch.isclose(combined_loss(logits, labels, kind, 0.5).total.double(),
                             _hand_ce(logits, labels, [0, 1, 2, 3]))


def test_one_kind_batch_keeps_its_weight():
    """The missing kind contributes 0; the present kind keeps its weight (not renormalised to 1)."""
    torch.manual_seed(4)
    logits = torch.randn(2, 6, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 6))
    labels[:, :2] = IGNORE
    alpha = 0.3
    only_ra = combined_loss(logits, labels, torch.tensor([1, 1]), alpha)
    assert only_ra.parts["feedback"] is None and only_ra.tokens["feedback"] == 0
    torch.testing.assert_close(only_ra.total.double(), (1 - alpha) * _hand_ce(logits.detach(), labels, [0, 1]))
    only_fb = combined_loss(logits, labels, torch.tensor([0, 0]), alpha)
    torch.testing.assert_close(only_fb.total.double(), alpha * _hand_ce(logits.detach(), labels, [0, 1]))
    only_fb.total.backward()
    assert logits.grad.abs().sum() > 0


def test_presets_and_config_checks():
    cfg = preset("paper", base_model="m", records="r", out_dir="o")
    assert (cfg.pairing, cfg.batch_size, cfg.grad_accum, cfg.weight_decay, cfg.warmup_ratio, cfg.schedule) == \
        (True, 4, 2, 0.01, 0.0, "constant")             # 4 pairs (their no-flash-attention batch), no warmup
    assert (cfg.epochs, cfg.max_length, cfg.max_grad_norm, cfg.seed, cfg.alpha) == (10, 512, 0.3, 731, 0.5)
    assert cfg.learning_rate == 2e-4                     # not the full fine-tune's 1e-5
    default = TrainConfig(base_model="m", records="r", out_dir="o")
    assert default.pairing and default.weight_decay == 0.0
    assert preset("qlora", base_model="m", records="r", out_dir="o").lora_r == 64
    assert set(PRESETS) >= {"paper", "qlora"}
    with pytest.raises(ValueError, match="alpha"):
        TrainConfig(base_model="m", records="r", out_dir="o", alpha=1.5)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(base_model="m", records="r", out_dir="o", schedule="linear")
    with pytest.raises(ValueError, match="weight_decay"):
        TrainConfig(base_model="m", records="r", out_dir="o", weight_decay=-0.1)


def test_weight_decay_reaches_the_optimizer(tiny_cfg):
    layer = torch.nn.Linear(4, 4)
    for decay in (0.0, 0.01):
        optimizer = make_optimizer(layer, replace(tiny_cfg, weight_decay=decay), torch.device("cpu"))
        assert [g["weight_decay"] for g in optimizer.param_groups] == [decay]
    before = layer.weight.detach().clone()
    layer.weight.grad, layer.bias.grad = torch.zeros(4, 4), torch.zeros(4)
    optimizer.step()                                  # no gradient: only the decay moves the weights
    torch.testing.assert_close(layer.weight.detach(), before * (1 - tiny_cfg.learning_rate * 0.01))


def test_pairing_and_weight_decay_are_part_of_the_identity(tiny_cfg):
    identity = tiny_cfg.identity()
    assert identity != replace(tiny_cfg, pairing=False).identity()
    assert identity != replace(tiny_cfg, weight_decay=0.01).identity()


# ---------------------------------------------------------------- real training on the tiny model

RUNNER = """
import json, sys, time
from mapd.training import TrainConfig, train
cfg, delay = TrainConfig(**json.loads(sys.argv[1])), float(sys.argv[2])
train(cfg, on_step=(lambda step, record: time.sleep(delay)) if delay else None)
"""


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MAPD_THREADS": "1",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


class Planted:
    """Unpickled without weights_only, it runs a command (it touches ``marker``)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _start(cfg: TrainConfig, delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(asdict(cfg)), str(delay)], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]


@pytest.fixture(scope="module")
def tiny_cfg(tiny_model, tmp_path_factory) -> TrainConfig:
    """20 optimizer steps (2 epochs x 10), micro-batches of 2 units with 2 accumulated, dropout
    on, 4-bit base, cosine schedule, some records truncated; paired (the default): 14 questions
    with both kinds (7 batches of pairs), 26 with a rationale only (13 batches of lone records)."""
    root = tmp_path_factory.mktemp("tiny-train")
    records = write_records(root / "records.parquet", 40)
    return TrainConfig(base_model=str(tiny_model), records=str(records), out_dir=str(root / "straight"),
                       epochs=2, batch_size=2, grad_accum=2, max_length=200, lora_r=8, lora_alpha=16,
                       learning_rate=2e-3, warmup_ratio=0.1, schedule="cosine", save_steps=3, seed=5)


@pytest.fixture(scope="module")
def straight_run(tiny_cfg) -> Path:
    proc = _start(tiny_cfg)
    _finish(proc)
    return Path(tiny_cfg.out_dir) / "adapter"


@pytest.mark.slow
def test_kill_and_resume_is_exact(tiny_cfg, straight_run, tmp_path):
    cfg = replace(tiny_cfg, out_dir=str(tmp_path / "killed"), save_steps=2)   # save_steps does not change weights
    ckpts = tmp_path / "killed" / "checkpoints"
    proc = _start(cfg, delay=0.3)
    deadline = time.time() + 240
    while not any(p.name.startswith("step-") for p in ckpts.glob("step-*")) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "adapter").exists(), "killed too late: the run had finished"
    killed_at = max(int(p.name.split("-")[1]) for p in ckpts.glob("step-*"))
    assert 2 <= killed_at < 20 and killed_at != 10          # mid-epoch: the saved plan of pairs is reused

    # A run dir is data, never code. Someone who can write to it plants pickles that would run
    # code when loaded: one under the old RNG file name (never read), one as the optimizer state
    # (refused, in a copy of the run).
    marker = tmp_path / "code-ran"
    (checkpoint,) = ckpts.glob("step-*")
    torch.save(Planted(marker), checkpoint / "rng.pt")
    planted = tmp_path / "planted"
    shutil.copytree(tmp_path / "killed", planted)
    torch.save(Planted(marker), planted / "checkpoints" / checkpoint.name / "optimizer.pt")
    proc = _start(replace(cfg, out_dir=str(planted)))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Weights only load failed" in out, out[-3000:]
    assert not marker.exists()

    _finish(_start(cfg))
    assert not marker.exists()
    adapter = tmp_path / "killed" / "adapter"
    a = load_file(straight_run / "adapter_model.safetensors")
    b = load_file(adapter / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 2       # A and B of 7 linear layers in 2 blocks
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    card = json.loads((adapter / "card.json").read_text())
    assert card["resumes"] == 1 and card["steps"] == 20
    # the log is whole (the killed run's steps past its checkpoint were dropped) and the same
    log_a = [json.loads(x) for x in (straight_run.parent / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (adapter.parent / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == list(range(1, 21))
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert not ckpts.exists()


@pytest.mark.slow
def test_card_and_log(tiny_cfg, straight_run):
    card = json.loads((straight_run / "card.json").read_text())
    assert card["dataset"]["sha256"] == hashlib.sha256(Path(tiny_cfg.records).read_bytes()).hexdigest()
    assert card["dataset"]["path"] == str(Path(tiny_cfg.records).resolve())
    assert card["base_model"] == str(Path(tiny_cfg.base_model).resolve())
    assert card["config"] == asdict(tiny_cfg)
    counts = card["counts"]
    assert counts["records"] == 54 and counts["per_kind"] == {"feedback": 14, "rationale": 40}
    assert counts["examples"] + counts["skipped"] == 54 and counts["truncated"] > 0
    assert (counts["pairs"], counts["unpaired"]) == (14, 26)
    assert card["steps"] == card["horizon"] == 20 and card["steps_per_epoch"] == 10
    assert all(math.isfinite(v) for v in card["last_epoch_mean_losses"].values())
    # the last step may hold lone rationales only, then its feedback loss is None
    assert math.isfinite(card["final_losses"]["loss"]) and math.isfinite(card["final_losses"]["rationale"])
    assert 0.0 <= card["padding_fraction"] < 0.5 and card["tokens_per_second"] > 0 and card["wall_seconds"] > 0
    assert card["versions"]["peft"] and card["versions"]["bitsandbytes"] and card["resumes"] == 0
    assert card["compute_dtype"] == "float32"
    log = [json.loads(x) for x in (straight_run.parent / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 20 and all({"loss_feedback", "loss_rationale", "lr", "grad_norm"} <= r.keys() for r in log)
    assert any(r["loss_feedback"] is not None and r["loss_rationale"] is not None for r in log)
    assert all(r["loss_rationale"] is not None for r in log)        # feedback comes only in pairs here
    lrs = [r["lr"] for r in log]
    assert lrs[0] < lrs[1] and lrs[-1] < max(lrs)          # warmup, then cosine decay
    assert not (Path(tiny_cfg.out_dir) / "checkpoints").exists()


@pytest.mark.slow
def test_adapter_reloads_and_changes_logits(tiny_cfg, straight_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert json.loads((straight_run / "adapter_config.json").read_text())["r"] == 8
    base = AutoModelForCausalLM.from_pretrained(tiny_cfg.base_model, dtype=torch.float32)
    x = torch.tensor([[1, 50, 300, 2000, 7, 99]])
    with torch.no_grad():
        before = base(input_ids=x).logits
        tuned = PeftModel.from_pretrained(base, straight_run).eval()
        after = tuned(input_ids=x).logits
    assert after.shape == before.shape and (after - before).abs().max() > 1e-3


@pytest.mark.slow
def test_finished_run_is_returned_and_guarded(tiny_cfg, straight_run):
    stamp = (straight_run / "adapter_model.safetensors").stat().st_mtime_ns
    assert train(tiny_cfg) == straight_run                              # done: nothing loads, nothing changes
    assert (straight_run / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="another config"):
        train(replace(tiny_cfg, alpha=0.7))


@pytest.mark.slow
def test_training_continues_from_a_previous_adapter(tiny_cfg, straight_run, tmp_path):
    """A later round starts from the last round's adapter: its first loss is the trained one,
    not a fresh adapter's, and the starting weights' checksum is part of the identity."""
    cfg = replace(tiny_cfg, out_dir=str(tmp_path / "next"), init_adapter=str(straight_run), max_steps=2)
    adapter = train(cfg)
    first = [json.loads(x) for x in (straight_run.parent / "train_log.jsonl").read_text().splitlines()]
    then = [json.loads(x) for x in (adapter.parent / "train_log.jsonl").read_text().splitlines()]
    assert len(then) == 2 and then[0]["loss"] < first[0]["loss"]
    a, b = load_file(straight_run / "adapter_model.safetensors"), load_file(adapter / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    sha = hashlib.sha256((straight_run / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert cfg.identity()["init_adapter"] == sha


# ---------------------------------------------------------------- the real student, 4-bit

@pytest.mark.slow
def test_real_smollm2_steps_in_4bit(smol_spec, tmp_path):
    """Two optimizer steps on the same two short records with SmolLM2-135M in NF4: the loss is
    finite and falls, and the adapter moved away from its init (LoRA B starts at zero)."""
    path = tmp_path / "r.parquet"
    pl.DataFrame({"record_id": ["rationale:t:0", "feedback:t:0"], "question_id": ["q0", "q0"],
                  "kind": ["rationale", "feedback"],
                  "prompt": ["What is 3 + 4?", "What is 3 + 4?\nYour earlier answer was: 8. The correct answer is 7."],
                  "response": ["3 + 4 = 7. The answer is 7.", "You added one too many: 3 + 4 = 7, not 8."]}
                 ).write_parquet(path)
    cfg = TrainConfig(base_model=smol_spec.path, records=str(path), out_dir=str(tmp_path / "out"), epochs=2,
                      batch_size=2, max_length=96, lora_r=8, learning_rate=1e-3, warmup_ratio=0.0, max_steps=2)
    adapter = train(cfg)
    log = [json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)
    assert log[1]["loss"] < log[0]["loss"]
    weights = load_file(adapter / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    assert json.loads((adapter / "card.json").read_text())["config"]["quantize"] is True
