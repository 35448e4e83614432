"""The model, optimizer and learning-rate schedule of QLoRA fine-tuning.

The base model is loaded in 4-bit NF4 with double quantization (bitsandbytes), prepared for k-bit
training with gradient checkpointing, and gets LoRA adapters on all its linear layers (peft). On
a GPU the compute dtype is bfloat16 and the optimizer bitsandbytes' paged AdamW (32-bit states);
on a CPU the compute dtype is float32 (CPUs without bf16 instructions emulate it slowly) and the
optimizer torch's AdamW. `quantize=False` loads the base in full precision instead; "auto" (the
default) is NF4 on a GPU and full precision on a CPU (config.resolve_quantize).
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from .config import TrainConfig, resolve_quantize


def pick_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(cfg: TrainConfig, device: torch.device):
    """The base model with fresh LoRA adapters (their init drawn from torch's RNG, seeded by
    cfg.seed), or with ``cfg.init_adapter`` loaded trainable to continue from it."""
    dtype = compute_dtype(device)
    device_map = {"": device.index} if device.type == "cuda" else "cpu"
    path = str(Path(cfg.base_model).resolve())
    if resolve_quantize(cfg.quantize, device.type):
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=dtype,
                                                     device_map=device_map)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if cfg.init_adapter:
        return PeftModel.from_pretrained(model, str(Path(cfg.init_adapter).resolve()), is_trainable=True)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed)
    return get_peft_model(model, lora)


def logits_at(model, batch: dict, positions: torch.Tensor) -> torch.Tensor:
    """The logits (B, K, V) at ``positions`` of the batch's sequences: transformers' causal LMs run
    their LM head there alone (logits_to_keep); a model whose forward lacks it (custom code)
    computes every position's and those are picked."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "logits_to_keep" in inspect.signature(model.get_base_model().forward).parameters:
        return model(**inputs, logits_to_keep=positions).logits
    return model(**inputs).logits[:, positions]


def make_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if device.type == "cuda":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW32bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def lr_factor(step: int, warmup: int, horizon: int, schedule: str) -> float:
    """The rate of optimizer step `step` (0-based) as a fraction of the peak: a linear warmup
    (1/(w+1), 2/(w+1), ... never 0), then constant or a cosine decay towards 0 at the horizon."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, horizon - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer, cfg: TrainConfig, horizon: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = math.ceil(cfg.warmup_ratio * horizon)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, horizon, cfg.schedule))
