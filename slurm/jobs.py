"""The job list of a run: which SLURM jobs the pipeline is made of, what each one needs, and
which of its shards are still to do.

One job = one stage x one model: an array job whose task i runs shard i
(``mapd <stage> <run options> [--model NAME] --shard $SLURM_ARRAY_TASK_ID``), or a plain job for
a stage that is not sharded. ``plan(pipeline)`` lists them in submission order; a job waits
(``afterok``) for the jobs it ``needs`` that were actually submitted.

Adding a stage is one more ``Job(...)`` in ``plan``. The distilled eval's identity holds the
adapter's checksum, so before training it is planned as "all shards to do", needing "train".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from local_teachers.registry import ModelSpec

# Names that end up in file names, job names and #SBATCH lines: nothing a shell or sbatch
# would read as anything but a name.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class Job:
    key: str                        # file stem and job name: "teach-tiny-a", "dataset"
    stage: str                      # the `mapd` subcommand the job runs
    spec: ModelSpec | None          # the model it loads (resources come from it); None: CPU only
    num_shards: int | None          # an array over this many shards; None: one plain job
    pending: dict[int, str] | str | None   # array: {shard: why not done}; plain: why not done, or None
    args: list[str] = field(default_factory=list)   # extra arguments of the stage command
    needs: list[str] = field(default_factory=list)  # keys of the jobs whose output it reads
    label: str = ""

    @property
    def sharded(self) -> bool:
        return self.num_shards is not None

    @property
    def todo(self) -> list[int] | bool:
        """Array: the shards not done (sorted); plain job: whether it is not done."""
        if self.sharded:
            return sorted(self.pending or {})
        return self.pending is not None

    @property
    def done(self) -> bool:
        return not self.todo

    @property
    def model(self) -> str | None:
        return self.spec.name if self.spec else None


def _key(stage: str, spec: ModelSpec | None) -> str:
    return stage if spec is None else f"{stage}-{spec.name}"


def plan(pipeline, shards: list[int] | None = None) -> list[Job]:
    """Every job of the pipeline, upstream first, with what is left to do. ``shards`` limits
    the arrays to those shards (the ``--shard`` run option) and leaves the unsharded jobs out."""
    n = pipeline.cfg.num_shards
    jobs: list[Job] = []

    def model_job(stage, needs, extra_args=()):
        key = _key(stage.name, stage.spec)
        jobs.append(Job(key, stage.name, stage.spec, n, stage.pending(shards), list(extra_args), list(needs),
                        label=stage.label))
        return key

    exam = model_job(pipeline.exam, [])
    teaches = [model_job(t, [exam], ["--model", t.spec.name]) for t in pipeline.teaches]
    reviews = [model_job(r, [exam, *teaches], ["--model", r.spec.name]) for r in pipeline.reviews]
    if shards is None:      # the dataset reads every shard: not part of a submission of some shards
        jobs.append(Job("dataset", "dataset", None, None, pipeline.dataset.pending(), [], [exam, *teaches, *reviews],
                        label="dataset"))
        jobs.append(Job("train", "train", pipeline.train.spec, None, pipeline.train.pending(), [], ["dataset"],
                        label="train"))
    model_job(pipeline.eval_base, [], ["--variant", "base"])
    try:
        distilled = pipeline.eval_distilled()
        pending = distilled.pending(shards)
    except FileNotFoundError:           # not trained yet: every shard is to do
        distilled, pending = pipeline.eval_base, {i: "not trained yet" for i in (shards or range(n))}
    needs = ["train"] if shards is None else []
    jobs.append(Job("eval-distilled", "eval", distilled.spec, n, pending, ["--variant", "distilled"], needs,
                    label="eval distilled"))
    return jobs


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
