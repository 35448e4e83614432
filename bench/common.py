"""Helpers shared by the benchmarks that work on a real run directory."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import yaml

from batch.config import RunConfig
from batch.pipeline import Pipeline
from local_teachers.engine import go_offline


def open_run(run_dir: Path, **options) -> Pipeline:
    """The run in ``run_dir``: as its config.yaml says when it has one (``options`` are then
    ignored), else a new run there with ``options`` (RunConfig fields). Done stages are kept
    by whatever runs it next, as in `mapd distill`."""
    go_offline()
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        raw = yaml.safe_load(saved.read_text())
        raw.update(run_dir=run_dir, teachers=tuple(raw["teachers"]),
                   policy_overrides=tuple(raw.get("policy_overrides", {}).items()),
                   train_overrides=tuple(raw.get("train_overrides", {}).items()))
        cfg = RunConfig(**raw)
        print(f"reusing the run in {run_dir} (its config.yaml; stages already done are kept)")
    else:
        cfg = RunConfig(run_dir=run_dir, **options)
        print(f"new run in {run_dir}")
    pipeline = Pipeline(cfg)
    if not saved.is_file():
        cfg.save()
    return pipeline


def quiet_logging(run_dir: Path) -> None:
    """The project's INFO log to <run>/logs/bench.log; warnings also on stderr."""
    (Path(run_dir) / "logs").mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(Path(run_dir) / "logs" / "bench.log")
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[to_file, to_stderr], force=True)
