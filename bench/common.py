"""Helpers shared by the benchmarks that work on a real run directory."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from mapd.batch.config import RunConfig
from mapd.batch.graph import Graph
from mapd.local_teachers.engine import go_offline


def open_run(run_dir: Path, **options) -> Graph:
    """The run in ``run_dir``: as its config.yaml says when it has one (``options`` are then
    ignored), else a new run there with ``options`` (RunConfig fields). Done stages are kept
    by whatever runs it next, as in `mapd distill`."""
    go_offline()
    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():
        cfg = RunConfig.load(run_dir)
        print(f"reusing the run in {run_dir} (its config.yaml; stages already done are kept)")
    else:
        cfg = RunConfig(run_dir=run_dir, **options)
        cfg.save()
        print(f"new run in {run_dir}")
    return Graph(cfg)


def quiet_logging(run_dir: Path) -> None:
    """The project's INFO log to <run>/logs/bench.log; warnings also on stderr."""
    (Path(run_dir) / "logs").mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(Path(run_dir) / "logs" / "bench.log")
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[to_file, to_stderr], force=True)
