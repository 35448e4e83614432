"""A trained adapter merged into its base: W + (lora_alpha / r) * B @ A in every adapted layer,
written as a plain model folder (safetensors weights, config, generation config, tokenizer, chat
template) that vLLM and transformers load without peft. The distilled eval answers with it on
CPU, where vLLM's LoRA path runs at a third of the plain engine's speed; `mapd export-model`
hands it to other tools.

The adapter was trained on a 4-bit NF4 base (QLoRA); like vLLM's LoRA path and peft at eval,
this applies it to the full-precision base, so the arithmetic is the same, up to the order of
float operations."""
from __future__ import annotations

import errno
import glob
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from mapd.local_teachers.fingerprint import WEIGHT_SUFFIXES, file_sha256, model_fingerprint

log = logging.getLogger(__name__)

RECORD = "merged.json"     # what the folder was made from: a folder made from the same is kept
IN_THE_WAY = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)   # rename's errors for a taken name
# A merge's temporary folder untouched this long belongs to a merge killed before it could delete
# it (SIGKILL, a lost node): merges write in minutes.
STALE_AFTER_S = 3600
ADAPTER_FILES = {"adapter_sha256": "adapter_model.safetensors", "adapter_config_sha256": "adapter_config.json"}


def adapter_checksums(adapter_dir: str | Path) -> dict[str, str | None]:
    """What decides an adapter's effect: its weights and its config (rank, alpha, the layers it
    adapts); None for a file it lacks."""
    files = {key: Path(adapter_dir) / name for key, name in ADAPTER_FILES.items()}
    return {key: file_sha256(path) if path.is_file() else None for key, path in files.items()}


def merge_adapter(base_model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path,
                  dtype: str | None = None) -> Path:
    """Write ``adapter_dir`` merged into ``base_model_dir`` to ``out_dir``, its weights in
    ``dtype`` (default: the base's own), and return ``out_dir``. A folder already there made
    from the same base, adapter and dtype is kept; anything else there is replaced. The folder is
    written under a temporary name and renamed into place, so a reader (or a job merging the same
    at the same time) sees a complete folder or none."""
    base, adapter, out = Path(base_model_dir), Path(adapter_dir), Path(out_dir)
    dtype = dtype or _stored_dtype(base)
    record = {"base_model": model_fingerprint(base), **adapter_checksums(adapter), "dtype": dtype}
    _delete_stale(out)
    if _record(out) == record:
        log.info("merge: %s already holds %s merged into %s", out, adapter, base)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.mkdir()     # under the umask, as the files written into it
    try:
        _write(base, adapter, tmp, dtype)
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
        _put_in_place(tmp, out, record)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("merge: %s merged into %s (%s) written to %s", adapter, base, dtype, out)
    return out


def _delete_stale(out: Path) -> None:
    """Delete the temporary folders of killed merges into ``out``; one being written (by a job
    merging the same at the same time) is touched as files go into it, so it is kept."""
    for tmp in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_AFTER_S:
                log.info("merge: deleting %s, left by a merge that was killed", tmp)
                shutil.rmtree(tmp)
        except FileNotFoundError:
            continue          # another job deleted it first


def _stored_dtype(base: Path) -> str:
    config = json.loads((base / "config.json").read_text())
    return config.get("dtype") or config.get("torch_dtype") or "float32"


def _record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _write(base: Path, adapter: Path, out: Path, dtype: str) -> None:
    """The merged weights and config by transformers, the base's other files (tokenizer, chat
    template, generation config) copied as they are."""
    import gc

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .checkpoint import fsync_tree

    # Merged in float32 whatever the stored dtype: a bfloat16 sum would round the small update away.
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.to(getattr(torch, dtype)).save_pretrained(out)
    del model
    gc.collect()    # the engine that loads the merged folder next needs the memory
    for path in base.iterdir():
        if path.is_file() and path.name != "config.json" and path.suffix not in WEIGHT_SUFFIXES \
                and not path.name.endswith(".index.json"):
            shutil.copyfile(path, out / path.name)
    fsync_tree(out)


def _put_in_place(tmp: Path, out: Path, record: dict) -> None:
    """Rename ``tmp`` to ``out``; what is in the way is moved aside and deleted, unless it is a
    folder made from the same (by another job meanwhile): then it is kept."""
    while True:
        try:
            os.rename(tmp, out)       # replaces an empty folder, fails on anything else
            return
        except OSError as e:
            if e.errno not in IN_THE_WAY:
                raise
        if _record(out) == record:
            return
        aside = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.old")
        try:
            os.rename(out, aside)
        except FileNotFoundError:
            continue                  # another job moved it first
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        else:
            aside.unlink()
