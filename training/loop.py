"""`train(cfg)`: the training loop, its checkpoints, log and the final adapter with its card.

Layout of cfg.out_dir:
    adapter/            the final adapter (peft format) + tokenizer + card.json, written atomically
    checkpoints/        the latest checkpoint while the run is going (deleted once it is done)
    train_log.jsonl     one line per optimizer step: both losses, lr, grad norm, tokens
A rerun with the same config resumes from the latest checkpoint, or returns the finished adapter.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import shutil
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from mapd.local_teachers.threads import fit_threads

from . import checkpoint
from .config import TrainConfig, TrainingStopped, file_sha256, resolve_quantize
from .data import KINDS, collate, encode_records, load_records, pair_units, plan_batches
from .loss import combined_loss, target_positions
from .qlora import compute_dtype, load_model, logits_at, make_optimizer, make_scheduler, pick_device

log = logging.getLogger(__name__)
CARD_FORMAT = "mapd-train-card/1"


@contextlib.contextmanager
def _stop_requests():
    """SIGTERM (the SLURM job script's on time limit or preemption, SLURM itself, `kill`) asks
    training to stop after the step in progress: set while it runs, the old handler back after."""
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread():   # signals reach the main thread only
        yield asked
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: asked.set())
    try:
        yield asked
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(cfg: TrainConfig, *, on_step: Callable[[int, dict], None] | None = None) -> Path:
    """Fine-tune cfg.base_model on cfg.records; returns the adapter folder. `on_step(step, record)`
    is called after each optimizer step (monitoring, tests)."""
    started = time.time()
    out = Path(cfg.out_dir)
    adapter_dir, ckpt_root, log_path = out / "adapter", out / "checkpoints", out / "train_log.jsonl"
    records = load_records(cfg.records)
    sha = file_sha256(cfg.records)
    if _finished(adapter_dir, cfg, sha):
        log.info("train: %s already holds this run's adapter", adapter_dir)
        shutil.rmtree(ckpt_root, ignore_errors=True)
        return adapter_dir

    for stale in out.glob(f".{adapter_dir.name}.tmp-*"):   # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    device = pick_device()
    threads = fit_threads() if device.type == "cpu" else None
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base_model)
    encoded = encode_records(records, tokenizer, cfg.max_length, cfg.chat_template_kwargs)
    examples = encoded.examples
    lengths = [len(e) for e in examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    units = pair_units(examples) if cfg.pairing else [[i] for i in range(len(examples))]
    pairs = sum(len(u) == 2 for u in units)
    counts = {**encoded.counts(), "pairs": pairs, "unpaired": len(units) - pairs}
    log.info("train: %s", counts)

    def plan(epoch: int) -> list[list[int]]:
        return plan_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length, units)

    batches_per_epoch = len(plan(0))    # the same in every epoch
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    horizon = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        horizon = min(horizon, cfg.max_steps)

    quantize = resolve_quantize(cfg.quantize, device.type)
    resumed_from = checkpoint.latest(ckpt_root)
    if resumed_from is not None:
        saved = checkpoint.read_state(resumed_from)
        if not cfg.made(saved["identity"]) or saved["records_sha256"] != sha:
            raise ValueError(f"{resumed_from} is a checkpoint of a different run (config or records differ); "
                             f"use another out_dir or delete {ckpt_root}")
        quantize = saved["identity"]["quantize"]     # "auto" resumes on the base the run started on
    resolved = replace(cfg, quantize=quantize)
    model = load_model(resolved, device)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = make_scheduler(optimizer, cfg, horizon)
    state = {"step": 0, "epoch": 0, "position": 0, "order": None, "identity": resolved.identity(),
             "records_sha256": sha, "counters": {"tokens": 0, "slots": 0, "train_seconds": 0.0, "resumes": 0},
             "last": None}
    if resumed_from is not None:
        state = checkpoint.restore(resumed_from, model, optimizer, scheduler)
        state["counters"]["resumes"] += 1
        log.info("train: resumed from %s (step %d)", resumed_from, state["step"])
    _trim_log(log_path, state["step"])
    model.train()

    bar = tqdm(total=horizon, initial=state["step"], desc="train", unit="step", dynamic_ncols=True)
    with open(log_path, "a") as log_file, _stop_requests() as stop:
        for epoch in range(state["epoch"], cfg.epochs):
            if state["step"] >= horizon:
                break
            if epoch != state["epoch"] or state["order"] is None:
                state.update(epoch=epoch, position=0, order=plan(epoch))
            order = state["order"]
            while state["position"] < len(order) and state["step"] < horizon:
                group = [[examples[i] for i in b] for b in order[state["position"]:state["position"] + cfg.grad_accum]]
                record = train_step(model, optimizer, scheduler, group, cfg, pad_id, device)
                state["step"] += 1
                state["position"] += len(group)
                counters = state["counters"]
                counters["tokens"] += record["tokens"]
                counters["slots"] += record["slots"]
                counters["train_seconds"] += record["seconds"]
                record = {"step": state["step"], "epoch": epoch, "epoch_progress": state["position"] / len(order),
                          **record}
                state["last"] = record
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                bar.update(1)
                bar.set_postfix(fb=_fmt(record["loss_feedback"]), ra=_fmt(record["loss_rationale"]))
                epoch_done = state["position"] >= len(order)
                if epoch_done:
                    checkpoint.save(ckpt_root, model, optimizer, scheduler,
                                    {**state, "epoch": epoch + 1, "position": 0, "order": None})
                elif (cfg.save_steps and state["step"] % cfg.save_steps == 0) or stop.is_set():
                    checkpoint.save(ckpt_root, model, optimizer, scheduler, state)
                if on_step is not None:
                    on_step(state["step"], record)
                if stop.is_set():
                    bar.close()
                    raise TrainingStopped(f"train: stopped by SIGTERM after step {state['step']} of {horizon}, "
                                          f"checkpoint saved in {ckpt_root}: run the stage again to resume from it")
    bar.close()

    _save_adapter(model, tokenizer, adapter_dir, _card(
        cfg, sha, counts, state, log_path, steps_per_epoch, horizon, device, threads, time.time() - started,
        resumed_from))
    shutil.rmtree(ckpt_root, ignore_errors=True)
    log.info("train: adapter written to %s", adapter_dir)
    return adapter_dir


def train_step(model, optimizer, scheduler, group, cfg: TrainConfig, pad_id: int, device) -> dict:
    """One optimizer step over a group of micro-batches (gradient accumulation). Each micro-batch's
    combined loss is divided by the group's size, so the step follows their mean."""
    began = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]
    sums = {k: 0.0 for k in KINDS}
    seen = {k: 0 for k in KINDS}
    total = 0.0
    tokens = slots = 0
    for examples in group:
        batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
        positions = target_positions(batch["labels"])
        loss = combined_loss(logits_at(model, batch, positions), batch["labels"][:, positions + 1], batch["kind"],
                             cfg.alpha)
        (loss.total / len(group)).backward()
        total += loss.total.item() / len(group)
        for k, part in loss.parts.items():
            if part is not None:
                sums[k] += part.item()
                seen[k] += 1
        tokens += int(batch["attention_mask"].sum())
        slots += batch["attention_mask"].numel()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.max_grad_norm and cfg.max_grad_norm > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    else:
        grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": total,
            "loss_feedback": sums["feedback"] / seen["feedback"] if seen["feedback"] else None,
            "loss_rationale": sums["rationale"] / seen["rationale"] if seen["rationale"] else None,
            "lr": lr, "grad_norm": grad_norm, "tokens": tokens, "slots": slots,
            "seconds": time.perf_counter() - began}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _trim_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to `step` (those a killed run wrote past its checkpoint go)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if path.exists() and step > 0:
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _finished(adapter_dir: Path, cfg: TrainConfig, sha: str) -> bool:
    card_path = adapter_dir / "card.json"
    if not card_path.is_file():
        return False
    card = json.loads(card_path.read_text())
    if not cfg.made(card.get("config_identity")) or card["dataset"]["sha256"] != sha:
        raise ValueError(f"{adapter_dir} holds an adapter trained with another config or records; "
                         "use another out_dir or delete it")
    return True


def _versions() -> dict:
    import bitsandbytes
    import peft
    import polars
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__, "polars": polars.__version__}


def _card(cfg, sha, counts, state, log_path, steps_per_epoch, horizon, device, threads, wall, resumed_from) -> dict:
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x]
    last_epoch = [r for r in lines if r["epoch"] == lines[-1]["epoch"]] if lines else []

    def mean(key):
        values = [r[key] for r in last_epoch if r[key] is not None]
        return sum(values) / len(values) if values else None

    c = state["counters"]
    last = state["last"] or {}
    return {
        "format": CARD_FORMAT,
        "base_model": str(Path(cfg.base_model).resolve()),
        "dataset": {"path": str(Path(cfg.records).resolve()), "sha256": sha},
        "config": cfg.to_dict(),
        "config_identity": state["identity"],
        "quantized": state["identity"]["quantize"],     # the base it trained on: "auto" resolved
        "counts": counts,
        "steps": state["step"], "steps_per_epoch": steps_per_epoch, "horizon": horizon,
        "final_losses": {"loss": last.get("loss"), "feedback": last.get("loss_feedback"),
                         "rationale": last.get("loss_rationale")},
        "last_epoch_mean_losses": {"loss": mean("loss"), "feedback": mean("loss_feedback"),
                                   "rationale": mean("loss_rationale")},
        "tokens_per_second": c["tokens"] / c["train_seconds"] if c["train_seconds"] else None,
        "padding_fraction": 1.0 - c["tokens"] / c["slots"] if c["slots"] else None,
        "train_tokens": c["tokens"],
        "train_seconds": c["train_seconds"],
        "wall_seconds": wall,           # this process only; train_seconds spans resumes
        "resumes": c["resumes"],
        "resumed_from": str(resumed_from) if resumed_from else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({threads} threads)",
        "compute_dtype": str(compute_dtype(device)).removeprefix("torch."),
        "versions": _versions(),
    }


def _save_adapter(model, tokenizer, adapter_dir: Path, card: dict) -> None:
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "card.json").write_text(json.dumps(card, indent=2))
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(tmp, adapter_dir)
