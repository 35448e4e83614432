"""Training throughput and padding, with and without length-grouped batches, side by side.

    .venv/bin/python bench/train_padding.py [--records 256] [--steps 6] [--batch-size 4]

SmolLM2-135M-Instruct in 4-bit NF4 with LoRA (the real training path: `training.loop.train_step`).
Records are built like the dataset stage's from GSM8K train: rationale records (the student's exam
prompt -> the reference worked answer) and feedback records (exam prompt + a wrong earlier answer
+ the gold hint -> a comment and the worked answer), so their lengths vary as real ones do.
The padding fraction is computed over a whole epoch's batches; tokens/s (real, non-padding
tokens) is timed on the first --steps batches of each plan, alternating one step of each mode,
so both see the same machine load. One model is loaded once and trains in both modes.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import click  # noqa: E402
import polars as pl  # noqa: E402

from mapd.batch.prompts import load_prompt  # noqa: E402
from mapd.local_teachers.registry import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def build_records(n: int) -> pl.DataFrame:
    rows = [json.loads(x) for x in (ROOT / "batch/data/gsm8k/train.jsonl").read_text().splitlines()[:n]]
    exam, feedback = load_prompt("student_answer", "math"), load_prompt("train/feedback")
    records = []
    for i, r in enumerate(rows):
        steps, gold = r["answer"].split("####")
        worked = f"{steps.strip()}\nThe answer is {gold.strip()}"
        instruction = exam.render(question=r["question"])
        if i % 2:
            wrong = rows[i - 1]["answer"].split("####")[0].strip()     # another problem's reasoning: wrong here
            prompt = feedback.render(instruction=instruction, student_answer=wrong, gold=gold.strip())
            response = f"The earlier answer solved a different problem. Step by step:\n{worked}"
            kind = "feedback"
        else:
            prompt, response, kind = instruction, worked, "rationale"
        records.append({"record_id": f"{kind}:bench:{i}", "question_id": f"gsm8k-{i}", "kind": kind,
                        "prompt": prompt, "response": response})
    return pl.DataFrame(records)


@click.command()
@click.option("--records", "n_records", default=256, show_default=True, help="records built from GSM8K train")
@click.option("--steps", default=6, show_default=True, help="timed optimizer steps per mode")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--max-length", default=512, show_default=True)
@click.option("--model", default="smollm2-135m-instruct", show_default=True)
@click.option("--quantize/--no-quantize", default=True, show_default=True)
def main(n_records, steps, batch_size, max_length, model, quantize):
    from transformers import AutoTokenizer

    from mapd.local_teachers.threads import fit_threads
    from mapd.training.config import TrainConfig
    from mapd.training.data import encode_records, padding_fraction, plan_batches
    from mapd.training.loop import train_step
    from mapd.training.qlora import load_model, make_optimizer, make_scheduler, pick_device

    path = load_spec(model).path
    device = pick_device()
    threads = fit_threads() if device.type == "cpu" else None
    cfg = TrainConfig(base_model=path, records="-", out_dir="-", batch_size=batch_size, max_length=max_length,
                      quantize=quantize, warmup_ratio=0.0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoded = encode_records(build_records(n_records), tokenizer, max_length)
    examples = encoded.examples
    lengths = [len(e) for e in examples]
    print(f"{len(examples)} records ({encoded.counts()['examples_per_kind']}), tokens per record "
          f"min {min(lengths)} median {sorted(lengths)[len(lengths) // 2]} max {max(lengths)}, "
          f"{encoded.counts()['truncated']} truncated, {encoded.counts()['skipped']} skipped; batch {batch_size}, {steps} timed steps per mode; "
          f"{device}{f', {threads} thread(s)' if threads else ''}, {'NF4' if quantize else 'full precision'}")

    t = time.time()
    model_ = load_model(cfg, device)
    optimizer = make_optimizer(model_, cfg, device)
    scheduler = make_scheduler(optimizer, cfg, horizon=2 * steps + 1)
    model_.train()
    print(f"model loaded in {time.time() - t:.1f}s")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    modes = {"grouped by length": True, "plain shuffle": False}
    plans = {m: plan_batches(lengths, batch_size, cfg.seed, 0, g) for m, g in modes.items()}
    # warm-up step (allocator, first-call costs), not timed
    warm = [[examples[i] for i in plans["plain shuffle"][-1]]]
    train_step(model_, optimizer, scheduler, warm, cfg, pad_id, device)
    totals = {m: {"tokens": 0, "slots": 0, "seconds": 0.0} for m in modes}
    for k in range(steps):
        for m in modes:
            r = train_step(model_, optimizer, scheduler, [[examples[i] for i in plans[m][k]]], cfg, pad_id, device)
            for key in totals[m]:
                totals[m][key] += r[key]
            print(f"  {m:18s} step {k + 1}: {r['tokens']:5d} tokens / {r['slots']:5d} slots, {r['seconds']:.1f}s, "
                  f"loss {r['loss']:.3f}", flush=True)

    base = totals["plain shuffle"]["tokens"] / totals["plain shuffle"]["seconds"]
    print("\n| batches | padding, whole epoch | padding, timed steps | real tokens | seconds | tokens/s | vs plain |")
    print("|---|---|---|---|---|---|---|")
    for m in modes:
        tt = totals[m]
        rate = tt["tokens"] / tt["seconds"]
        print(f"| {m} | {padding_fraction(plans[m], lengths):.1%} | {1 - tt['tokens'] / tt['slots']:.1%} | "
              f"{tt['tokens']} | {tt['seconds']:.1f} | {rate:.1f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
