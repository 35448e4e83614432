"""Exam throughput of the engines, side by side in one process on the same prompts.

    .venv/bin/python bench/exam_engines.py [--questions 16] [--max-tokens 128]

The student's exam prompt on the first SVAMP train questions, greedy float32 decoding, so every
backend generates the same tokens and tokens/s compare like for like. Each engine is warmed up
on one request before it is timed.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import click  # noqa: E402

from mapd.batch.prompts import load_prompt  # noqa: E402
from mapd.batch.tasks import get_task  # noqa: E402
from mapd.local_teachers.engine import Request, go_offline
from mapd.local_teachers.pool import load_engine  # noqa: E402
from mapd.local_teachers.registry import Sampling, load_spec  # noqa: E402


@click.command()
@click.option("--questions", default=16, show_default=True)
@click.option("--max-tokens", default=128, show_default=True)
@click.option("--model", default="smollm2-135m-instruct", show_default=True)
def main(questions, max_tokens, model):
    go_offline()
    task = get_task("svamp")
    prompt = load_prompt("student_answer", task.family)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens)
    requests = [Request(q.id, (("user", prompt.render(question=q.text)),), greedy, seed=0)
                for q in task.load("train")[:questions]]
    spec = load_spec(model)
    vllm = load_engine(spec.with_engine("vllm"))
    hf = load_engine(spec.with_engine("transformers"))
    one_at_a_time = load_engine(spec.with_engine("transformers"))
    one_at_a_time.batch_size = 1
    rows, texts = [], {}
    for name, engine in [("vllm", vllm), (f"transformers batch {hf.batch_size}", hf),
                         ("transformers batch 1", one_at_a_time)]:
        engine.generate(requests[:1])
        t0 = time.perf_counter()
        out = engine.generate(requests)
        seconds = time.perf_counter() - t0
        tokens = sum(c.completion_tokens for c in out)
        texts[name] = [c.text for c in out]
        rows.append((name, tokens, seconds, tokens / seconds))
    base = rows[0][3]
    print(f"\nexam on {questions} SVAMP questions, {spec.name}, greedy, max {max_tokens} new tokens, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    print(f"{'backend':<24}{'tokens':>8}{'seconds':>10}{'tok/s':>9}{'vs vllm':>9}")
    for name, tokens, seconds, rate in rows:
        print(f"{name:<24}{tokens:>8}{seconds:>10.1f}{rate:>9.1f}{rate / base:>9.2f}")
    same = all(t == texts["vllm"] for t in texts.values())
    print(f"identical completions across backends: {same}")


if __name__ == "__main__":
    main()
