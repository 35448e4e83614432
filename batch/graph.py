"""The stage graph of a run: every stage, in order, each knowing the stages it reads. Executors
(batch/local.py here, slurm/ on a cluster), the plan, the summary and the report loop over it.

Adding a stage is one module (a ``Stage`` subclass with ``build``) and one line in ``STAGES``."""
from __future__ import annotations

from .config import RunConfig
from .dataset import Dataset
from .eval import Eval
from .exam import Exam
from .interop.stages import IMPORTED
from .review import Review
from .stage import Stage
from .teach import Teach
from .train import Train

# The kinds of stage, in the order they run; each builds its stages from those before it.
STAGES: tuple[type[Stage], ...] = (Exam, Teach, Review, Dataset, Train, Eval)
NAMES = tuple(kind.name for kind in STAGES)


class Graph:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.stages: list[Stage] = []
        for kind in STAGES:
            # A run whose committee outputs are imported (mapd import) reads them from the file.
            self.stages += (IMPORTED.get(kind, kind) if cfg.imported else kind).build(self)

    def __iter__(self):
        return iter(self.stages)

    def named(self, name: str) -> list[Stage]:
        """Every stage of one kind: ``named("teach")`` is one per teacher."""
        return [s for s in self.stages if s.name == name]

    def one(self, name: str) -> Stage:
        (stage,) = self.named(name)
        return stage

    def __getitem__(self, key: str) -> Stage:
        for stage in self.stages:
            if stage.key == key:
                return stage
        raise KeyError(f"no stage {key!r} in this run; its stages: {', '.join(s.key for s in self.stages)}")

    def select(self, name: str, part: str | None = None) -> list[Stage]:
        """The stages of kind ``name`` (one of them when ``part`` is given)."""
        if name not in NAMES:
            raise KeyError(f"unknown stage {name!r}; choose one of {', '.join(NAMES)}")
        stages = [s for s in self.named(name) if part is None or s.part == part]
        if not stages:
            parts = ", ".join(s.part or "" for s in self.named(name)) or "none in this run"
            raise KeyError(f"no {name} stage {part!r} in this run; its {name} stages: {parts}")
        return stages

    def plan(self) -> list[tuple[str, str | None]]:
        """Each stage with the reason it will run, or None when its output is done and current."""
        return [(s.key, _shards_reason(s.pending(), s.num_shards, s.sharded)) for s in self.stages]


def _shards_reason(pending: dict[int, str], num_shards: int, sharded: bool) -> str | None:
    """``{shard: reason}`` as one line: how many shards for each reason."""
    if not sharded:
        return pending.get(0)
    by_reason: dict[str, list[int]] = {}
    for shard, reason in pending.items():
        by_reason.setdefault(reason, []).append(shard)
    return "; ".join(f"{len(shards)}/{num_shards} shards {reason}" for reason, shards in by_reason.items()) or None


def format_plan(steps: list[tuple[str, str | None]]) -> str:
    return "\n".join(f"  {key}: {'to do, ' + reason if reason else 'done, kept'}" for key, reason in steps)
