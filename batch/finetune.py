"""TRAIN as a stage of a run: QLoRA on the dataset's records (training/ does the work), the
adapter in <run>/train/adapter. training.train resumes from its last checkpoint and returns
at once when the adapter of this exact config and records already exists."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from local_teachers.registry import load_spec, require_local

from .dataset import Dataset
from .shards import StaleShardError

log = logging.getLogger(__name__)


class Train:
    name = "train"

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.cfg = dataset.cfg
        self.spec = load_spec(self.cfg.student)
        self.dir = Path(self.cfg.run_dir) / self.name
        self.adapter = self.dir / "adapter"

    def config(self):
        from training import preset

        return preset(self.cfg.train_preset, base_model=self.spec.path, records=str(self.dataset.records_path),
                      out_dir=str(self.dir), init_adapter=self.cfg.init_adapter,
                      **{"seed": self.cfg.seed, **dict(self.cfg.train_overrides)})

    def pending(self) -> str | None:
        """None when the adapter of these records and settings exists, else the reason."""
        if self.dataset.pending():
            return "its records are not written yet"
        trained = self._trained_with(self.config())
        if trained is None:
            return "not trained yet"
        if isinstance(trained, str):
            return trained
        if not (self.adapter / "card.json").is_file():
            # Only a checkpoint: training was stopped and is not done; it resumes from there.
            return "stopped before the end: resumes from its last checkpoint"
        return None

    def run(self) -> Path:
        from training import train

        reason = self.dataset.pending()
        if reason:
            raise StaleShardError(f"{self.dataset.records_path}: {reason}; run the dataset stage first")
        require_local(self.spec)
        cfg = self.config()
        stale = self._trained_with(cfg)
        if isinstance(stale, str):
            # training refuses to mix runs in one folder; here, as for every stage, new records
            # or settings make the old adapter and checkpoints outdated.
            log.info("train: %s was %s: starting again", self.dir, stale)
            shutil.rmtree(self.dir)
        return train(cfg)

    def _trained_with(self, cfg) -> bool | str | None:
        """What the folder holds: None (nothing), True (an adapter or checkpoint of ``cfg``
        and its records) or the reason it is outdated."""
        from training import checkpoint
        from training.data import file_sha256

        card = self.adapter / "card.json"
        last = checkpoint.latest(self.dir / "checkpoints")
        if card.is_file():
            old = json.loads(card.read_text())
            old_identity, old_sha = old.get("config_identity"), old["dataset"]["sha256"]
        elif last is not None:
            state = checkpoint.read_state(last)
            old_identity, old_sha = state["identity"], state["records_sha256"]
        else:
            return None
        if old_sha != file_sha256(cfg.records):
            return "trained on other records"
        if old_identity != json.loads(json.dumps(cfg.identity())):
            return "trained with other settings"
        return True
