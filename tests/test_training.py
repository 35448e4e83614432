"""Training runs: presets and config checks, the optimizer, exact kill & resume, the card, the adapter."""
from __future__ import annotations

import hashlib
import json
import math
import os
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

from mapd.training import PRESETS, TrainConfig, preset, train
from mapd.training.config import resolve_quantize
from mapd.training.data import IGNORE
from mapd.training.loss import combined_loss, target_positions
from mapd.training.qlora import load_model, logits_at, make_optimizer

from test_training_data import ROOT, write_records


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


def test_quantize_auto_is_nf4_on_a_gpu_and_float32_on_a_cpu(tiny_cfg):
    assert resolve_quantize("auto", "cuda") is True          # QLoRA where memory counts
    assert resolve_quantize("auto", "cpu") is False          # as fast, lighter, lower loss: train_cpu_path.py
    for explicit in (True, False):
        assert resolve_quantize(explicit, "cuda") is resolve_quantize(explicit, "cpu") is explicit
    assert preset("qlora", base_model="m", records="r", out_dir="o").quantize == "auto"
    assert tiny_cfg.quantize == "auto"
    with pytest.raises(ValueError, match="quantize"):
        TrainConfig(base_model="m", records="r", out_dir="o", quantize="nf4")
    # the identity holds the base trained on: auto and the bool it resolves to train the same adapter
    gpu, cpu = tiny_cfg.identity("cuda"), tiny_cfg.identity("cpu")
    assert (gpu["quantize"], cpu["quantize"]) == (True, False)
    assert gpu == replace(tiny_cfg, quantize=True).identity("cpu")
    assert cpu == replace(tiny_cfg, quantize=False).identity("cuda")
    # "auto" is done by an adapter of either base (a GPU's, checked on a CPU); a bool by its own only
    assert tiny_cfg.made(gpu) and tiny_cfg.made(cpu)
    assert replace(tiny_cfg, quantize=True).made(gpu) and not replace(tiny_cfg, quantize=True).made(cpu)
    assert not tiny_cfg.made(replace(tiny_cfg, alpha=0.7).identity("cpu"))


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
    on, quantize auto (float32 base on CPU), cosine schedule, some records truncated; paired (the default): 14 questions
    with both kinds (7 batches of pairs), 26 with a rationale only (13 batches of lone records)."""
    root = tmp_path_factory.mktemp("tiny-train")
    records = write_records(root / "records.parquet", 40)
    return TrainConfig(base_model=str(tiny_model), records=str(records), out_dir=str(root / "straight"),
                       epochs=2, batch_size=2, grad_accum=2, max_length=200, lora_r=8, lora_alpha=16,
                       learning_rate=2e-3, warmup_ratio=0.1, schedule="cosine", save_steps=3, seed=5)


def test_lm_head_at_the_target_positions_alone(tiny_cfg):
    """Training's forward runs the LM head at the positions that predict a target alone, and its
    loss and LoRA gradients are those of every position's logits (dropout on, the same draws)."""
    model = load_model(tiny_cfg, torch.device("cpu"))
    ids = torch.randint(0, 1000, (3, 40), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch["attention_mask"][1, 30:] = 0
    labels = ids.clone()
    labels[:, :12] = IGNORE                      # prompts
    labels[0, :25] = IGNORE
    labels[1, 30:] = IGNORE                      # padding
    kind = torch.tensor([0, 1, 1])
    positions = target_positions(labels)
    assert positions.tolist() == list(range(11, 39))
    head_rows = []
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape[1]))

    def loss_and_grads(logits, targets):
        model.zero_grad()
        loss = combined_loss(logits, targets, kind, 0.5)
        loss.total.backward()
        return [loss.total.detach()] + [p.grad.clone() for p in model.parameters() if p.requires_grad]

    torch.manual_seed(1)
    kept = loss_and_grads(logits_at(model, batch, positions), labels[:, positions + 1])
    torch.manual_seed(1)
    every = loss_and_grads(model(**batch).logits[:, :-1], labels[:, 1:])
    assert head_rows == [len(positions), ids.shape[1]]
    for a, b in zip(kept, every, strict=True):
        torch.testing.assert_close(a, b)


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
    assert card["quantized"] is False and card["config_identity"]["quantize"] is False   # auto on CPU
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


class Stop(Exception):
    pass


def _stop_at_step_1(step: int, record: dict) -> None:
    raise Stop


@pytest.mark.slow
def test_auto_resumes_on_the_base_the_run_started_on(tiny_cfg, tmp_path):
    """A run started in NF4 (as "auto" on a GPU) and resumed where "auto" means float32 (a CPU)
    goes on in NF4: a checkpoint's adapter never continues on another base."""
    cfg = replace(tiny_cfg, out_dir=str(tmp_path / "run"), save_steps=1)
    with pytest.raises(Stop):
        train(replace(cfg, quantize=True), on_step=_stop_at_step_1)
    card = json.loads((train(cfg) / "card.json").read_text())
    assert card["resumes"] == 1 and card["quantized"] is True and card["config"]["quantize"] == "auto"


# ---------------------------------------------------------------- the real student, 4-bit

@pytest.mark.slow
def test_real_smollm2_steps_in_4bit(smol_spec, tmp_path):
    """Two optimizer steps on the same two short records with SmolLM2-135M in NF4 (the GPU's
    path, here on CPU): the loss is finite and falls, and the adapter moved away from its init
    (LoRA B starts at zero)."""
    path = tmp_path / "r.parquet"
    pl.DataFrame({"record_id": ["rationale:t:0", "feedback:t:0"], "question_id": ["q0", "q0"],
                  "kind": ["rationale", "feedback"],
                  "prompt": ["What is 3 + 4?", "What is 3 + 4?\nYour earlier answer was: 8. The correct answer is 7."],
                  "response": ["3 + 4 = 7. The answer is 7.", "You added one too many: 3 + 4 = 7, not 8."]}
                 ).write_parquet(path)
    cfg = TrainConfig(base_model=smol_spec.path, records=str(path), out_dir=str(tmp_path / "out"), epochs=2,
                      batch_size=2, max_length=96, lora_r=8, learning_rate=1e-3, warmup_ratio=0.0, max_steps=2,
                      quantize=True)
    adapter = train(cfg)
    log = [json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)
    assert log[1]["loss"] < log[0]["loss"]
    weights = load_file(adapter / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    assert json.loads((adapter / "card.json").read_text())["quantized"] is True
