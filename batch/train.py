"""TRAIN as a stage of a run: LoRA (QLoRA on a GPU) on the dataset's records (training/ does the
work), the adapter in <run>/train/adapter. mapd.training.train resumes from its last checkpoint
and returns at once when the adapter of this exact config and records already exists."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from mapd.local_teachers.registry import load_spec, require_local

from .dataset import Dataset
from .shards import file_sha256
from .stage import Stage, WholeRunStage

log = logging.getLogger(__name__)


class Train(WholeRunStage):
    name = "train"
    frees_engine = True

    def __init__(self, dataset: Dataset):
        cfg = dataset.cfg
        super().__init__(cfg, [dataset], load_spec(cfg.student))
        self.dataset = dataset
        self.dir = Path(cfg.run_dir) / self.name
        self.adapter = self.dir / "adapter"

    @classmethod
    def build(cls, graph) -> list[Stage]:
        return [cls(graph.one("dataset"))]

    def config(self):
        from mapd.training import preset

        return preset(self.cfg.train_preset, base_model=self.spec.path, records=str(self.dataset.records_path),
                      out_dir=str(self.dir), init_adapter=self.cfg.init_adapter,
                      chat_template_kwargs=self.spec.chat_template_kwargs or None,
                      **{"seed": self.cfg.seed, **self.cfg.train_overrides})

    def outputs(self, shard: int = 0) -> list[Path]:
        return []       # no manifest: the distilled eval's identity holds the adapter's own checksum

    def stale(self) -> str | None:
        """None when the adapter of these records and settings exists, else why not."""
        trained = self._trained_with(self.config())
        if trained is None:
            return "not trained yet"
        if isinstance(trained, str):
            return trained
        if not (self.adapter / "card.json").is_file():
            # Only a checkpoint: training was stopped and is not done; it resumes from there.
            return "stopped before the end: resumes from its last checkpoint"
        return None

    def make(self) -> None:
        from mapd.training import train

        require_local(self.spec)
        cfg = self.config()
        stale = self._trained_with(cfg)
        if isinstance(stale, str):
            # training refuses to mix runs in one folder; here, as for every stage, new records
            # or settings make the old adapter and checkpoints outdated.
            log.info("train: %s was %s: starting again", self.dir, stale)
            shutil.rmtree(self.dir)
        train(cfg)

    def outcome(self, figures: dict) -> str:
        return f"adapter: {self.adapter}"

    def card(self) -> dict:
        return json.loads((self.adapter / "card.json").read_text())

    def summary_line(self) -> dict:
        card = self.card()
        counts = card["counts"]
        return {"stage": self.key, "rows": counts["examples"], "prompt_too_long": counts["skipped"],
                "hit_max_tokens": counts["truncated"], "empty": 0, "parse_failures": 0,
                "note": f"{counts['skipped']} records skipped, {counts['truncated']} truncated to max length; "
                        f"{card['resumes']} resumes after a stop"}

    def _trained_with(self, cfg) -> bool | str | None:
        """What the folder holds: None (nothing), True (an adapter or checkpoint of ``cfg``
        and its records) or the reason it is outdated."""
        from mapd.training import checkpoint

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
        if not cfg.made(old_identity):       # quantize "auto": an adapter of either base is done
            return "trained with other settings"
        return True
