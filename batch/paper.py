"""The paper's headline run, and how a run of this project differs from it: the report prints
both beside each other, so it says what makes them not directly comparable."""
from __future__ import annotations

from mapd.training.config import local_device_type, resolve_quantize

# The paper's headline accuracies (%), base -> distilled, Llama2-7B-chat student with its
# three-teacher committee (Li et al., arXiv 2410.03663, main results table).
PAPER = {"gsm8k": (16.55, 36.24), "svamp": (44.71, 59.50), "strategyqa": (48.53, 67.67), "logiqa": (16.50, 36.27)}
PAPER_SOURCE = "Li et al., arXiv 2410.03663, main results, Llama2-7B-chat student"
PAPER_STUDENT = "Llama2-7B-chat"
PAPER_TEACHERS = "GPT-3.5-Turbo, Gemini-1.0-Pro, Mixtral-8x7B-Instruct-v0.1 (two of them API models)"


def paper_differences(graph) -> list[tuple[str, str]]:
    """(what, how this run differs from the paper's headline run): one line per difference."""
    cfg = graph.cfg
    stage = graph.one("train")
    train = stage.config()
    # What the adapter was trained on, once it exists (a GPU node's NF4 seen from a CPU login node).
    quantized = (resolve_quantize(train.quantize, local_device_type()) if stage.pending()
                 else stage.card()["quantized"])
    split = graph.one("exam").task.note
    decoding = ("greedy (temperature 0), so the numbers repeat" if cfg.eval_sampling == "greedy" else
                f"sampled as the authors (temperature 0.3, top_p 0.9), {cfg.eval_samples} seeded answers per "
                "question, their mean ± spread")
    base = "a 4-bit NF4 base (QLoRA)" if quantized else "a full-precision base"
    return [
        ("split", split or "the official train/test split, as the paper's"),
        ("decoding", f"{decoding}; the authors sampled once (temperature 0.3, top_p 0.9, no seed)"),
        ("fine-tuning", f"LoRA r={train.lora_r} on {base}, lr {train.learning_rate:g}, {train.epochs} epochs "
                        "(preset " + cfg.train_preset + "); the authors fine-tuned every weight at lr 1e-5, 10 epochs"),
        ("teachers", f"{', '.join(cfg.teachers)}; the paper's: {PAPER_TEACHERS}"),
        ("student", f"{graph.one('exam').spec.name}; the paper's: {PAPER_STUDENT}"),
        ("committee", f"policy {cfg.policy}, selection {cfg.selection}, gold hint {cfg.gold_hint}"
                      + ("; the paper's rule is policy paper, selection paper, gold hint solution"
                         if (cfg.policy, cfg.selection, cfg.gold_hint) != ("paper", "paper", "solution") else
                         ", as the paper's")),
    ]
