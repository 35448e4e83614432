"""QLoRA fine-tuning of the student with the combined loss alpha * L_feedback + (1 - alpha) * L_rationale.

    from training import TrainConfig, train
    adapter_dir = train(TrainConfig(base_model=..., records="runs/.../dataset/records.parquet", out_dir=...))
"""
from .config import PRESETS, TrainConfig, preset
from .data import RecordsError
from .loop import train

__all__ = ["PRESETS", "RecordsError", "TrainConfig", "preset", "train"]
