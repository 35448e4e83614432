"""The resolved configuration of a run, saved as config.yaml in its run directory."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from .shards import atomic_write

DEFAULT_STUDENT = "smollm2-135m-instruct"
DEMO_COMMITTEE = ("demo-teacher-a", "demo-teacher-b", "demo-teacher-c")
PAPER_SEED = 731


@dataclass(frozen=True)
class RunConfig:
    task: str
    run_dir: Path
    student: str = DEFAULT_STUDENT      # registry name or YAML path
    engine: str | None = None           # overrides every model's registry engine (vllm | transformers)
    data: str | None = None             # None: bundled original files; else a folder, file or hub id
    limit: int | None = None            # first N questions of each split
    seed: int = PAPER_SEED
    num_shards: int = 1
    teachers: tuple[str, ...] = DEMO_COMMITTEE   # registry names or YAML paths
    policy: str = "default"             # acceptance preset (batch.committee.PRESETS)
    policy_overrides: tuple[tuple[str, object], ...] = ()   # (field, value) pairs over the preset
    selection: str = "paper"            # paper: one rationale + one feedback per question; all
    feedback: bool = True               # False: the no-feedback ablation
    train_preset: str = "qlora"         # training.PRESETS: qlora | paper
    train_overrides: tuple[tuple[str, object], ...] = ()    # (field, value) pairs over the preset
    init_adapter: str | None = None     # a later round: the student's adapter from the round before

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["run_dir"] = str(self.run_dir)
        d["teachers"] = list(self.teachers)
        d["policy_overrides"] = dict(self.policy_overrides)
        d["train_overrides"] = dict(self.train_overrides)
        return d

    def save(self) -> Path:
        """Write config.yaml (with its hash) into the run directory; returns its path."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = Path(self.run_dir) / "config.yaml"
        # Array tasks of one run may write it at the same time: never leave it half-written.
        atomic_write(path, lambda f: f.write(f"# config hash: {digest}\n{text}".encode()))
        return path


def request_seed(seed: int, *parts: str) -> int:
    """A per-request seed that depends only on the run seed and the request's identity, so a
    rerun or a different sharding samples the same text for the same request."""
    digest = hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def shard_slice(items: list, shard: int, num_shards: int) -> list:
    """Contiguous block ``shard`` of ``num_shards`` nearly equal blocks."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is outside 0..{num_shards - 1}")
    n = len(items)
    return items[shard * n // num_shards:(shard + 1) * n // num_shards]
