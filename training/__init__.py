"""QLoRA fine-tuning of the student with the combined loss alpha * L_feedback + (1 - alpha) * L_rationale.

    from mapd.training import TrainConfig, train
    adapter_dir = train(TrainConfig(base_model=..., records="runs/.../dataset/records.parquet", out_dir=...))

Importing the package is light (no torch): the configuration is checked before any work.
"""
from .config import PRESETS, RecordsError, TrainConfig, TrainingStopped, preset


def train(cfg: TrainConfig, **options):
    """Train (or resume, or return the finished adapter of ``cfg``); see mapd.training.loop.train."""
    from .loop import train as run

    return run(cfg, **options)


__all__ = ["PRESETS", "RecordsError", "TrainConfig", "TrainingStopped", "preset", "train"]
