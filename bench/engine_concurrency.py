"""vLLM's generated tokens/s by the number of sequences in flight, on one model entry as the
project loads it (its KV cache, threads and settings): what a stage gains from a KV cache that
holds its whole batch, and what it loses in the tail of a batch, when few sequences are left.

    .venv/bin/python bench/engine_concurrency.py [--model smollm2-135m-instruct] [--prompts 64]
        [--max-tokens 64] [--in-flight 8,16,32,64]

The same prompts every time, each generating exactly --max-tokens tokens (EOS ignored), given
to the engine N at a time; each N over all the prompts, side by side in one process.
"""
from __future__ import annotations

import time

import click

from mapd.local_teachers.engine import go_offline
from mapd.local_teachers.pool import load_engine
from mapd.local_teachers.registry import load_spec


@click.command()
@click.option("--model", default="smollm2-135m-instruct", show_default=True)
@click.option("--prompts", default=64, show_default=True)
@click.option("--max-tokens", default=64, show_default=True)
@click.option("--in-flight", default="8,16,32,64", show_default=True, help="sequences given to the engine at once")
def main(model, prompts, max_tokens, in_flight):
    from vllm import SamplingParams

    go_offline()
    spec = load_spec(model)
    if spec.engine != "vllm":
        raise click.UsageError(f"{model}: a vllm entry is needed, not {spec.engine}")
    llm = load_engine(spec).llm
    texts = [f"Write a long story about the number {i}." for i in range(prompts)]
    params = SamplingParams(temperature=0.8, max_tokens=max_tokens, ignore_eos=True, seed=1)
    llm.generate(texts[:2], params, use_tqdm=False)                  # warm-up
    print(f"\n{model}: {prompts} prompts x {max_tokens} new tokens, {spec.vllm}")
    print(f"{'in flight':>10}{'tokens':>8}{'seconds':>9}{'tok/s':>8}{'vs first':>10}")
    first = None
    for n in [int(k) for k in in_flight.split(",")]:
        t0, tokens = time.perf_counter(), 0
        for i in range(0, prompts, n):
            tokens += sum(len(o.outputs[0].token_ids) for o in llm.generate(texts[i:i + n], params, use_tqdm=False))
        seconds = time.perf_counter() - t0
        first = first or tokens / seconds
        print(f"{n:>10}{tokens:>8}{seconds:>9.1f}{tokens / seconds:>8.0f}{tokens / seconds / first:>10.2f}")


if __name__ == "__main__":
    main()
