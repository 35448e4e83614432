"""The jobs of a run: one SLURM job per stage of the stage graph, an array job whose task i runs
shard i (``mapd run-stage --run-dir R --stage KEY --shard $SLURM_ARRAY_TASK_ID``), or a plain
job for a stage that is not sharded. A job waits (``afterok``) for the jobs of the stages it
reads that were submitted with it. ``<run>/slurm/jobs.json`` records what was submitted: job
ids, array indices, scripts and logs; the configuration is the run's config.yaml.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from mapd.batch.shards import atomic_write

# Names that end up in file names, job names and #SBATCH lines: nothing a shell or sbatch
# would read as anything but a name.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class Job:
    stage: object                   # the mapd.batch.stage.Stage it runs
    pending: dict[int, str]         # {shard: why not done}; a stage that is not sharded has shard 0
    needs: list[str] = field(default_factory=list)  # keys of the jobs whose output it reads

    @property
    def key(self) -> str:
        """File stem and job name: ``teach-demo-teacher-a``, ``dataset``."""
        return self.stage.key.replace("/", "-")

    @property
    def label(self) -> str:
        return self.stage.key

    @property
    def spec(self):
        return self.stage.spec

    @property
    def model(self) -> str | None:
        return self.spec.name if self.spec else None

    @property
    def sharded(self) -> bool:
        return self.stage.sharded

    @property
    def num_shards(self) -> int:
        return self.stage.num_shards

    @property
    def todo(self) -> list[int]:
        return sorted(self.pending)

    @property
    def done(self) -> bool:
        return not self.pending


def run_jobs(graph, shards: list[int] | None = None) -> list[Job]:
    """Every job of the run, upstream first, with what is left to do. ``shards`` limits the
    arrays to those shards and leaves out the stages that are not sharded (they read every
    shard)."""
    stages = [s for s in graph if shards is None or s.sharded]
    keys = {s.key for s in stages}
    return [Job(s, s.pending(shards), [up.key.replace("/", "-") for up in s.needs if up.key in keys])
            for s in stages]


def array_spec(indices: list[int], limit: int | None = None) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (with "%limit" when at most ``limit`` may run at once)."""
    parts, run = [], []
    for i in sorted(set(indices)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts) + (f"%{limit}" if limit else "")


def parse_array(text: str) -> list[int]:
    """Inverse of ``array_spec``, also for SLURM's own forms ("0-7:2", "1,3-4%2")."""
    text = text.split("%", 1)[0]
    out: list[int] = []
    for part in filter(None, text.split(",")):
        step = 1
        if ":" in part:
            part, s = part.split(":", 1)
            step = int(s)
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1, step))
        else:
            out.append(int(part))
    return out


def jobs_file(run_dir: Path) -> Path:
    return Path(run_dir) / "slurm" / "jobs.json"


def read_jobs(run_dir: Path) -> dict:
    path = jobs_file(run_dir)
    if not path.is_file():
        return {"submissions": []}
    return json.loads(path.read_text())


def write_jobs(run_dir: Path, record: dict) -> None:
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(jobs_file(run_dir), lambda f: f.write(text.encode()))
