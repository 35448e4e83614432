"""Exact, atomic training checkpoints.

A checkpoint is a folder `checkpoints/step-XXXXXXXX/` holding the adapter weights, the optimizer
and scheduler states, every RNG state (safetensors and JSON), and `state.json` (step, epoch, position in the epoch, the
epoch's batch order, counters, the config identity). It is written under a temporary name and
renamed, so a run killed while saving leaves either the previous checkpoint or the new one, never
half of one. Restoring all of it makes a resumed run take exactly the steps an uninterrupted one
would have taken.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

NAME = re.compile(r"^step-(\d{8})$")
KEEP = 1    # completed checkpoints kept; older ones are deleted once a newer one is in place


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Every file of a folder, then the folder itself, on disk (before it is renamed into place)."""
    for f in path.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(path)


def save_rng(folder: Path) -> None:
    """Every RNG state in plain formats (safetensors, JSON): loading them runs no code, so a
    checkpoint in a shared run dir cannot run code as the next user who resumes from it."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    save_file(tensors, folder / "rng.safetensors")
    (folder / "rng_python.json").write_text(json.dumps(random.getstate()))


def load_rng(folder: Path) -> None:
    tensors = load_file(folder / "rng.safetensors")
    version, internal, gauss = json.loads((folder / "rng_python.json").read_text())
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda{i}"] for i in range(len(tensors) - 1)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save(root: Path, model, optimizer, scheduler, state: dict) -> Path:
    """Write a checkpoint for state["step"] under root atomically; returns its folder."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    adapter = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(adapter, tmp / "adapter.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    save_rng(tmp)
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    fsync_tree(tmp)
    if final.exists():          # the same step saved twice (epoch end == save_steps): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in completed(root)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def completed(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and NAME.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint; leftovers of a save that was killed are removed."""
    if root.is_dir():
        for p in root.glob(".tmp-step-*"):
            shutil.rmtree(p, ignore_errors=True)
    found = completed(root)
    return found[-1] if found else None


def read_state(path: Path) -> dict:
    return json.loads((path / "state.json").read_text())


def restore(path: Path, model, optimizer, scheduler) -> dict:
    """Load a checkpoint into a freshly built model/optimizer/scheduler; returns its state."""
    device = next(p.device for p in model.parameters() if p.requires_grad)
    adapter = load_file(path / "adapter.safetensors", device=str(device))
    set_peft_model_state_dict(model, adapter)
    loaded = get_peft_model_state_dict(model)
    if loaded.keys() != adapter.keys() or not all(torch.equal(loaded[k], adapter[k]) for k in adapter):
        raise RuntimeError(f"{path}: the checkpoint's adapter does not fit this model's LoRA layers")
    # weights_only: torch refuses a pickle that would run code (a checkpoint is data, never code).
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    load_rng(path)
    return read_state(path)
