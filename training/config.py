"""The training configuration and its presets."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from mapd.local_teachers.fingerprint import file_sha256, model_fingerprint

SCHEDULES = ("constant", "cosine")
DEVICE_TYPES = ("cuda", "cpu")
# quantize="auto" on a CPU: LoRA on the float32 base. bench/train_cpu_path.py found it as fast as
# NF4 within the noise (dequantizing is small next to the matmuls), about 20% lighter in memory and
# with lower losses (4 bits degrade a small base); it is also the base the CPU eval answers with.
CPU_QUANTIZE = False


def resolve_quantize(quantize: bool | str, device_type: str) -> bool:
    """Whether training on a device of ``device_type`` ("cuda" | "cpu") loads the base in NF4:
    "auto" is NF4 on a GPU (QLoRA, for memory) and CPU_QUANTIZE on a CPU; a bool is kept."""
    if quantize != "auto":
        return quantize
    return True if device_type == "cuda" else CPU_QUANTIZE


def local_device_type() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TrainingStopped(Exception):
    """Training was asked to stop (SIGTERM) and saved a checkpoint to resume from."""


class RecordsError(ValueError):
    """The records file cannot be trained on; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    base_model: str            # path to the student's model folder
    records: str               # path to the Parquet records
    out_dir: str               # adapter + checkpoints + card + logs go here
    alpha: float = 0.5         # weight of the feedback loss; the rationale loss gets 1 - alpha
    learning_rate: float = 2e-4
    epochs: int = 3
    batch_size: int = 4          # pairs per micro-batch when pairing (a lone record counts as one), else records
    grad_accum: int = 1
    max_length: int = 512
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    max_grad_norm: float = 0.3
    weight_decay: float = 0.0    # AdamW's decoupled weight decay on the LoRA weights
    warmup_ratio: float = 0.03
    schedule: str = "constant"   # "constant" (after warmup) | "cosine"
    group_by_length: bool = True
    pairing: bool = True         # a question's feedback and rationale share a batch (see data.pair_units)
    quantize: bool | str = "auto"  # True: 4-bit NF4 base (QLoRA); False: full precision; "auto": by device
    seed: int = 731
    save_steps: int | None = None
    max_steps: int | None = None  # stop early (tests, smoke runs); also the schedule's horizon
    init_adapter: str | None = None  # continue training this peft LoRA folder (a previous round's)
    chat_template_kwargs: dict | None = None  # the student entry's: records render as its prompts do

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        for name in ("epochs", "batch_size", "grad_accum", "max_length", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (isinstance(self.quantize, bool) or self.quantize == "auto"):
            raise ValueError(f"quantize must be true, false or auto, got {self.quantize!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("save_steps", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self, device_type: str | None = None) -> dict:
        """The fields that decide the trained weights, training on ``device_type`` (this machine's
        by default). A checkpoint or finished adapter in out_dir is reused only when these match;
        where the output goes and how often it is saved do not change the weights (checkpointing is
        exact), so they may differ. ``quantize`` is resolved: NF4 and float32 bases train different
        adapters, while "auto" and the bool it resolves to train the same."""
        d = self.to_dict()
        for key in ("out_dir", "save_steps"):
            d.pop(key)
        if not self.chat_template_kwargs:
            d.pop("chat_template_kwargs")    # added later: adapters trained before it stay done
        d["quantize"] = resolve_quantize(self.quantize, device_type or local_device_type())
        d["base_model"] = model_fingerprint(self.base_model)   # its content, not where it is mounted
        if self.init_adapter:
            # Its weights, not where it lies, decide what training starts from.
            d["init_adapter"] = file_sha256(Path(self.init_adapter) / "adapter_model.safetensors")
        return d

    def made(self, identity: dict) -> bool:
        """Whether ``identity`` (a card's or checkpoint's, read from JSON) is this config's on some
        device: "auto" accepts either base, so a run trained on a GPU stays done when a CPU checks it."""
        return any(json.loads(json.dumps(self.identity(d))) == identity for d in DEVICE_TYPES)


# Overrides of TrainConfig's defaults, by name; `TrainConfig(**{**PRESETS[name], base_model=...})`.
PRESETS: dict[str, dict] = {
    # The authors' effective settings (their released code, a full fine-tune), where they carry over
    # to LoRA: a question's feedback and rationale paired, 4 pairs per device batch (they ran 8 with
    # flash attention on GPU, 4 without; this project's transformers path loads no flash attention),
    # 2 accumulation steps, weight decay 0.01, the "constant" schedule (which ignores their warmup
    # ratio 0.03: no warmup in effect), 10 epochs, max length 512, max grad norm 0.3, seed 731,
    # alpha 0.5; paged AdamW is qlora.make_optimizer's on GPU. Their lr 1e-5 was for moving all
    # weights; LoRA's B starts at zero (its update scaled by lora_alpha / r), so the adapters need
    # a far larger rate: the QLoRA paper's 2e-4.
    "paper": dict(alpha=0.5, learning_rate=2e-4, epochs=10, batch_size=4, grad_accum=2, pairing=True,
                  max_length=512, max_grad_norm=0.3, weight_decay=0.01, warmup_ratio=0.0, schedule="constant",
                  seed=731),
    # The QLoRA paper's defaults (Dettmers et al. 2023) for models up to 13B: r=64, alpha=16,
    # dropout 0.1, lr 2e-4, max grad norm 0.3, warmup 0.03, constant schedule, group by length;
    # their NF4 base on a GPU, the float32 one on a CPU (see CPU_QUANTIZE).
    "qlora": dict(lora_r=64, lora_alpha=16, lora_dropout=0.1, learning_rate=2e-4, max_grad_norm=0.3,
                  warmup_ratio=0.03, schedule="constant", group_by_length=True, quantize="auto"),
}


def preset(name: str, **fields) -> TrainConfig:
    """A config from a named preset plus explicit fields (which win)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **fields})
