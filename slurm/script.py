"""The job script of one job: #SBATCH lines from its resources, the offline environment,
the USR1 handler that requeues it, and the command, from templates/stage.sbatch."""
from __future__ import annotations

import datetime as _dt
import re
import shlex
import shutil
import sys
from pathlib import Path

from mapd.local_teachers.engine import OFFLINE_ENV
from mapd.local_teachers.registry import cache_dir

from .cluster import SubmitError
from .jobs import Job, array_spec
from .resources import Resources, SlurmOptions, signal_lead

TEMPLATE = Path(__file__).parent / "templates" / "stage.sbatch"


def mapd_executable() -> str:
    """The `mapd` of this environment (the one running now), by absolute path."""
    here = Path(sys.executable).parent / "mapd"
    found = str(here) if here.is_file() else shutil.which("mapd")
    if not found:
        raise SubmitError("cannot find the `mapd` command next to this Python or on PATH; install the package")
    return str(Path(found).absolute())


def stage_command(run_dir: Path, stage_key: str, opts: SlurmOptions, gpus: int, binds: list[str]) -> list[str]:
    """`mapd run-stage` of one stage from the run's config.yaml: this environment's `mapd`, or
    with a container the image's `mapd`, run by `apptainer exec` with ``binds`` (the run dir,
    the models, the cache) mounted at the same paths (--nv: the node's GPUs and driver)."""
    command = ["run-stage", "--run-dir", str(run_dir), "--stage", stage_key]
    if opts.container is None:
        return [mapd_executable(), *command]
    return ["apptainer", "exec", *(["--nv"] if gpus else []), "--bind", ",".join(binds), opts.container,
            "mapd", *command]


def sbatch_lines(job: Job, res: Resources, opts: SlurmOptions, log_pattern: str, workdir: str) -> list[str]:
    lines = [f"--job-name=mapd-{job.key}"]
    if job.sharded:
        lines.append(f"--array={array_spec(job.todo, opts.array_limit)}")
    lines += [f"--output={log_pattern}", f"--chdir={workdir}", "--nodes=1", "--ntasks=1",
              f"--cpus-per-task={res.cpus}", f"--time={res.time}"]
    if res.mem:
        lines.append(f"--mem={res.mem}")
    if res.gpus:
        lines.append(f"--gres=gpu:{res.gpus}")
    for flag, value in (("partition", res.partition), ("account", res.account), ("qos", res.qos)):
        if value:
            lines.append(f"--{flag}={value}")
    lines += ["--requeue", "--open-mode=append", f"--signal=B:USR1@{signal_lead(res, opts)}", *res.extra]
    return lines


def render_script(job: Job, res: Resources, opts: SlurmOptions, *, command: list[str], log_pattern: str,
                  workdir: str, script: Path) -> str:
    exports = {**OFFLINE_ENV, "PYTHONUNBUFFERED": "1"}
    export_lines = [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    # Registry paths use ${MAPD_CACHE}: keep the submitter's unless the job's environment sets one.
    export_lines.append(f"export MAPD_CACHE=\"${{MAPD_CACHE:-{shlex.quote(str(cache_dir()))}}}\"")
    if job.sharded:
        n = len(job.todo)
        what = (f"array task i runs shard i; {n} of {job.num_shards} shard{'s' if job.num_shards > 1 else ''} "
                f"to do ({array_spec(job.todo)})")
    else:
        what = "one job (not sharded)"
    values = {
        "label": job.label or job.key,
        "what": what,
        "written": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "script": shlex.quote(str(script)),
        "sbatch": "\n".join(f"#SBATCH {line}" for line in sbatch_lines(job, res, opts, log_pattern, workdir)),
        "workdir": shlex.quote(workdir),
        "exports": "\n".join(export_lines),
        "lead": str(signal_lead(res, opts)),
        "max_requeues": str(int(opts.max_requeues)),
        "setup": "\n".join(res.setup) if res.setup else "# (no setup lines: see mapd submit --setup)",
        "command": shlex.join(command),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:
        raise RuntimeError(f"{TEMPLATE}: unfilled placeholders {left}")
    return text
