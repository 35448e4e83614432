"""Eval throughput, before and after eval ran at engine speed (issue #15): tokens/s of the exam,
the base eval and the distilled eval, side by side in one process on the real student.

    .venv/bin/python bench/eval_speed.py [--questions 24] [--max-tokens 128] [--adapter DIR]

Before: both eval variants on one LoRA-enabled vLLM engine, the distilled one through vLLM's LoRA
path. After (what the eval stage does on CPU): the base variant on the exam's plain engine, the
distilled one on the adapter merged into a copy of the base (training/merge.py). The student's
exam prompt, greedy float32 decoding; the exam answers the first --questions SVAMP train
questions, the evals the first test ones. The three engines (plain, LoRA-enabled, merged) load
once and stay loaded; each is warmed up on one request of each kind, then the runs take turns,
--rounds times, and the best round of each is shown (the cores may be busy). The adapter:
a trained one (--adapter, e.g. <run>/train/adapter), or a small random update of the training's
default shape (r 64 on every linear layer), made here. Also printed: what each way costs once
per run (engine loads, the merge), and whether the answers agree.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import click

from mapd.batch.exam import with_lora
from mapd.batch.prompts import load_prompt
from mapd.batch.tasks import get_task
from mapd.local_teachers.engine import Request, go_offline
from mapd.local_teachers.pool import load_engine
from mapd.local_teachers.registry import Sampling, load_spec
from mapd.training.merge import merge_adapter


def random_adapter(base: str, out: Path) -> Path:
    """LoRA r 64 on every linear layer, B drawn small (training starts it at 0 and moves it a little)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=64, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    model.save_pretrained(out)
    return out


def questions(split: str, n: int, max_tokens: int) -> list[Request]:
    task = get_task("svamp")
    prompt = load_prompt("student_answer", task.family)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens)
    return [Request(q.id, (("user", prompt.render(question=q.text)),), greedy, seed=0) for q in task.load(split)[:n]]


def timed(engine, requests: list[Request], adapter: str | None) -> dict:
    t0 = time.perf_counter()
    out = engine.generate(requests, adapter=adapter)
    seconds = time.perf_counter() - t0
    return {"tokens": sum(c.completion_tokens for c in out), "seconds": seconds, "texts": [c.text for c in out]}


def loaded(spec) -> tuple[object, float]:
    t0 = time.perf_counter()
    return load_engine(spec), time.perf_counter() - t0


@click.command()
@click.option("--questions", "n", default=24, show_default=True)
@click.option("--max-tokens", default=128, show_default=True)
@click.option("--rounds", default=2, show_default=True, help="each run repeated, interleaved; the best is shown")
@click.option("--model", default="smollm2-135m-instruct", show_default=True)
@click.option("--adapter", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="a trained adapter [default: a small random one]")
def main(n, max_tokens, rounds, model, adapter):
    go_offline()
    spec = load_spec(model)
    with tempfile.TemporaryDirectory(prefix="mapd-bench-eval-") as work:
        adapter = str(adapter or random_adapter(spec.path, Path(work) / "adapter"))
        # All three engines stay loaded to the end: the runs interleave, so a busy spell on the
        # machine slows them alike (closing an in-process vLLM engine would also end the others).
        plain, load_plain = loaded(spec)
        lora, load_lora = loaded(with_lora(spec))
        t0 = time.perf_counter()
        merged_dir = merge_adapter(spec.path, adapter, Path(work) / "merged", spec.dtype)
        merge = time.perf_counter() - t0
        merged, load_merged = loaded(dataclasses.replace(spec, path=str(merged_dir)))
        exam, test = questions("train", n, max_tokens), questions("test", n, max_tokens)
        runs = {  # run: (engine, what it loads, requests, adapter)
            "exam": (plain, "plain", exam, None),
            "base before": (lora, "LoRA-enabled", test, None),
            "distilled before": (lora, "LoRA path", test, adapter),
            "base after": (plain, "plain (the exam's)", test, None),
            "distilled after": (merged, "merged", test, None),
        }
        for engine, _, requests, lora_dir in runs.values():
            engine.generate(requests[:1], adapter=lora_dir)      # warm-up
        done: dict[str, list[dict]] = {key: [] for key in runs}
        for _ in range(rounds):
            for key, (engine, _, requests, lora_dir) in runs.items():
                done[key].append(timed(engine, requests, lora_dir))

    threads = os.environ.get("MAPD_THREADS") or os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0))
    print(f"\nexam on {n} SVAMP train questions, evals on {n} test questions; {spec.name} on vLLM, greedy, "
          f"max {max_tokens} new tokens, {threads} threads of {os.cpu_count()} CPUs, best of {rounds} rounds")
    print("| run | engine | tokens | seconds | tok/s | vs exam | tok/s per round |\n|---|---|---|---|---|---|---|")
    rates = {key: [r["tokens"] / r["seconds"] for r in results] for key, results in done.items()}
    best = {key: max(r) for key, r in rates.items()}
    seconds = {key: done[key][0]["tokens"] / best[key] for key in runs}    # greedy: every round, the same tokens
    for key, (_, what, _, _) in runs.items():
        print(f"| {key} | {what} | {done[key][0]['tokens']} | {seconds[key]:.1f} | {best[key]:.1f} | "
              f"{best[key] / best['exam']:.2f} | {', '.join(f'{r:.1f}' for r in rates[key])} |")
    before = load_lora + seconds["base before"] + seconds["distilled before"]
    after = merge + load_merged + seconds["base after"] + seconds["distilled after"]
    print(f"eval, both variants, with what each way loads once per run: before {before:.1f} s (LoRA-enabled "
          f"engine load {load_lora:.1f} s); after {after:.1f} s (merge {merge:.1f} s, merged engine load "
          f"{load_merged:.1f} s; plus {load_plain:.1f} s for the plain engine when no longer loaded from the exam)")
    for what, a, b in [("base", "base before", "base after"), ("distilled", "distilled before", "distilled after")]:
        same = sum(x == y for x, y in zip(done[a][0]["texts"], done[b][0]["texts"]))
        print(f"identical {what} answers before and after: {same}/{n}")


if __name__ == "__main__":
    main()
