"""Training throughput and padding of three batch plans, side by side: paired (a question's
feedback and rationale in one batch, grouped by length: the default), unpaired grouped by length
(`pairing` off), and a plain shuffle.

    .venv/bin/python bench/train_padding.py [--records 256] [--steps 6] [--batch-size 4]

SmolLM2-135M-Instruct in 4-bit NF4 with LoRA (the real training path: `training.loop.train_step`).
Records are built like the dataset stage's (paper selection) from GSM8K train: per question a
rationale record (the student's exam prompt -> the reference worked answer) and a feedback record
(exam prompt + a wrong earlier answer + the gold hint -> a comment and the worked answer), so
their lengths vary as real ones do. --batch-size counts rows in every plan (paired: half as many
pairs), so the plans compare at the same batch shape. The padding fraction and the share of
batches holding both kinds are computed over a whole epoch's batches; tokens/s (real, non-padding
tokens) is timed on the first --steps batches of each plan, alternating one step of each plan,
so all see the same machine load. One model is loaded once and trains in every plan.
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
    for i, r in enumerate(rows[:n // 2]):
        steps, gold = r["answer"].split("####")
        worked = f"{steps.strip()}\nThe answer is {gold.strip()}"
        instruction = exam.render(question=r["question"])
        wrong = rows[i - 1]["answer"].split("####")[0].strip()     # another problem's reasoning: wrong here
        kinds = {"rationale": (instruction, worked),
                 "feedback": (feedback.render(instruction=instruction, student_answer=wrong, gold=gold.strip()),
                              f"The earlier answer solved a different problem. Step by step:\n{worked}")}
        records += [{"record_id": f"{kind}:bench:{i}", "question_id": f"gsm8k-{i}", "kind": kind,
                     "prompt": prompt, "response": response} for kind, (prompt, response) in kinds.items()]
    return pl.DataFrame(records)


@click.command()
@click.option("--records", "n_records", default=256, show_default=True,
              help="records built from GSM8K train: a rationale and a feedback per question")
@click.option("--steps", default=6, show_default=True, help="timed optimizer steps per plan")
@click.option("--batch-size", default=4, show_default=True, help="rows per batch (even: paired, half as many pairs)")
@click.option("--max-length", default=512, show_default=True)
@click.option("--model", default="smollm2-135m-instruct", show_default=True)
@click.option("--quantize/--no-quantize", default=True, show_default=True)
def main(n_records, steps, batch_size, max_length, model, quantize):
    from transformers import AutoTokenizer

    from mapd.local_teachers.threads import fit_threads
    from mapd.training.config import TrainConfig
    from mapd.training.data import encode_records, padding_fraction, pair_units, plan_batches
    from mapd.training.loop import train_step
    from mapd.training.qlora import load_model, make_optimizer, make_scheduler, pick_device

    if batch_size % 2:
        raise click.BadParameter("must be even: a paired batch holds whole pairs", param_hint="--batch-size")
    path = load_spec(model).path
    device = pick_device()
    threads = fit_threads() if device.type == "cpu" else None
    cfg = TrainConfig(base_model=path, records="-", out_dir="-", batch_size=batch_size, max_length=max_length,
                      quantize=quantize, warmup_ratio=0.0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoded = encode_records(build_records(n_records), tokenizer, max_length)
    examples = encoded.examples
    lengths = [len(e) for e in examples]
    counts = encoded.counts()
    print(f"{len(examples)} records ({counts['examples_per_kind']}), tokens per record "
          f"min {min(lengths)} median {sorted(lengths)[len(lengths) // 2]} max {max(lengths)}, "
          f"{counts['truncated']} truncated, {counts['skipped']} skipped; batches of {batch_size} rows, "
          f"{steps} timed steps per plan; "
          f"{device}{f', {threads} thread(s)' if threads else ''}, {'NF4' if quantize else 'full precision'}")

    t = time.time()
    model_ = load_model(cfg, device)
    optimizer = make_optimizer(model_, cfg, device)
    scheduler = make_scheduler(optimizer, cfg, horizon=3 * steps + 1)
    model_.train()
    print(f"model loaded in {time.time() - t:.1f}s")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    units = pair_units(examples)
    plans = {"paired, grouped": plan_batches(lengths, batch_size // 2, cfg.seed, 0, True, units),
             "unpaired, grouped": plan_batches(lengths, batch_size, cfg.seed, 0, True),
             "plain shuffle": plan_batches(lengths, batch_size, cfg.seed, 0, False)}
    print(f"{sum(len(u) == 2 for u in units)} pairs, {sum(len(u) == 1 for u in units)} lone records")
    # warm-up step (allocator, first-call costs), not timed
    warm = [[examples[i] for i in plans["plain shuffle"][-1]]]
    train_step(model_, optimizer, scheduler, warm, cfg, pad_id, device)
    totals = {m: {"tokens": 0, "slots": 0, "seconds": 0.0} for m in plans}
    for k in range(steps):
        for m in plans:
            r = train_step(model_, optimizer, scheduler, [[examples[i] for i in plans[m][k]]], cfg, pad_id, device)
            for key in totals[m]:
                totals[m][key] += r[key]
            print(f"  {m:17s} step {k + 1}: {r['tokens']:5d} tokens / {r['slots']:5d} slots, {r['seconds']:.1f}s, "
                  f"loss {r['loss']:.3f}", flush=True)

    base = totals["unpaired, grouped"]["tokens"] / totals["unpaired, grouped"]["seconds"]
    print("\n| batches | both kinds, whole epoch | padding, whole epoch | padding, timed steps | real tokens | "
          "seconds | tokens/s | vs unpaired, grouped |")
    print("|---|---|---|---|---|---|---|---|")
    for m in plans:
        tt = totals[m]
        rate = tt["tokens"] / tt["seconds"]
        both = sum(len({examples[i].kind for i in b}) == 2 for b in plans[m]) / len(plans[m])
        print(f"| {m} | {both:.0%} | {padding_fraction(plans[m], lengths):.1%} | "
              f"{1 - tt['tokens'] / tt['slots']:.1%} | {tt['tokens']} | {tt['seconds']:.1f} | {rate:.1f} | "
              f"{rate / base:.2f} |")


if __name__ == "__main__":
    main()
