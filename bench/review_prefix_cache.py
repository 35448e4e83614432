"""Peer review with and without vLLM's prefix cache, on the same requests.

    .venv/bin/python bench/review_prefix_cache.py [--run-dir runs/bench/svamp] [--task svamp] [--limit 4]
        [--max-tokens N] [--block-size N]

The requests are the review stage's own (batch/review.py builds them: each reviewer scores the
other teachers' rationales), from a real run: --run-dir reuses a run whose teach stage is done,
else a new run there (default: a fresh temporary one) runs exam and teach first. They are sent,
reviewer after reviewer as `mapd distill` does (committee members that share weights share one
engine), through the project's VLLMEngine twice, each time in its own process: with
`enable_prefix_caching` False, then True (the registry entry's `vllm:` options, which override
the engine's default). Sampling is the reviewers' own (seeded; --max-tokens overrides the
length). Reported: prompt tokens submitted, prompt tokens served from the cache (vLLM's
`RequestOutput.num_cached_tokens`), hence computed, and generation time. vLLM caches whole
KV blocks only (128 tokens by default on CPU; --block-size to change it), so only a shared
prefix of at least one block is reused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from common import open_run, quiet_logging

from mapd.local_teachers.engine import Request
from mapd.local_teachers.pool import EnginePool
from mapd.local_teachers.registry import Sampling, load_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakes import ScriptedEngine  # noqa: E402


def review_requests(run_dir: Path, task: str, limit: int) -> list[dict]:
    """Per reviewer, in graph order: its registry spec and its review requests (all shards)."""
    graph = open_run(run_dir, task=task, limit=limit, policy="paper")
    quiet_logging(run_dir)
    with EnginePool() as pool:
        for stage in [graph.one("exam"), *graph.named("teach")]:
            if stage.pending():
                print(f"running {stage.key} for the rationales to review ...", flush=True)
                stage.run(pool=pool)
    groups = []
    for review in graph.named("review"):
        capture = ScriptedEngine(lambda request, adapter: "")      # records the requests, answers nothing
        for shard in range(graph.cfg.num_shards):
            review.rows(shard, capture)
        groups.append({"spec": review.spec.source, "reviewer": review.spec.name,
                       "requests": [dataclasses.asdict(r) for r in capture.seen]})
    return groups


def keep_outputs(llm) -> list:
    """Keep every vllm RequestOutput the engine receives (the project's engine returns only
    the text and token counts): they carry ``num_cached_tokens``."""
    kept, generate = [], llm.generate

    def keeping(*args, **kwargs):
        outputs = generate(*args, **kwargs)
        kept.extend(outputs)
        return outputs

    llm.generate = keeping
    return kept


def serve(groups: list[dict], caching: bool, block_size: int | None, max_tokens: int | None) -> dict:
    """In this process: every group's requests through the project's engine; per-request figures."""
    pool, seen = EnginePool(), {}
    rows = []
    for g in groups:
        spec = load_spec(g["spec"])
        options = {**spec.vllm, "enable_prefix_caching": caching, **({"block_size": block_size} if block_size else {})}
        engine = pool.get(dataclasses.replace(spec, vllm=options))
        if id(engine) not in seen:                      # a newly loaded engine: warm it up, keep its outputs
            seen[id(engine)] = keep_outputs(engine.llm)
            engine.generate([Request("warm-up", (("user", "Say hello."),), Sampling(0.0, 1.0, 8), 0)])
            engine.llm.reset_prefix_cache()
            seen[id(engine)].clear()
        outputs = seen[id(engine)]
        requests = [Request(r["id"], tuple(map(tuple, r["messages"])),
                            Sampling(**{**r["sampling"], **({"max_tokens": max_tokens} if max_tokens else {})}), r["seed"])
                    for r in g["requests"]]
        start, t0 = len(outputs), time.perf_counter()
        completions = engine.generate(requests)
        seconds = time.perf_counter() - t0
        cached = [o.num_cached_tokens or 0 for o in outputs[start:]]
        rows.append({"reviewer": g["reviewer"], "requests": len(requests), "seconds": seconds,
                     "prompt_tokens": sum(c.prompt_tokens for c in completions), "cached_tokens": sum(cached),
                     "completion_tokens": sum(c.completion_tokens for c in completions),
                     "texts": [c.text for c in completions],
                     "block_size": engine.llm.llm_engine.vllm_config.cache_config.block_size})
    pool.close()
    return {"caching": caching, "reviewers": rows}


@click.command()
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="a run to take the rationales from (its teach stage is run if not done) [default: a new temporary run]")
@click.option("--task", default="svamp", show_default=True, help="for a new run")
@click.option("--limit", default=4, show_default=True, help="questions, for a new run")
@click.option("--max-tokens", type=int, default=None, help="review length [default: each reviewer's registry entry]")
@click.option("--block-size", type=int, default=None, help="vLLM KV block size [default: vLLM's, 128 on CPU]")
@click.option("--child", type=click.Path(path_type=Path), default=None, hidden=True)
@click.option("--caching/--no-caching", default=True, hidden=True)
def main(run_dir, task, limit, max_tokens, block_size, child, caching):
    if child is not None:
        groups = json.loads(child.read_text())
        out = serve(groups, caching, block_size, max_tokens)
        child.with_suffix(f".{caching}.json").write_text(json.dumps(out))
        return
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="mapd-bench-review-"))
    groups = review_requests(run_dir, task, limit)
    work = Path(tempfile.mkdtemp(prefix="mapd-bench-review-requests-")) / "requests.json"
    work.write_text(json.dumps(groups))
    results = {}
    for flag in (False, True):
        cmd = [sys.executable, __file__, "--child", str(work), "--caching" if flag else "--no-caching"]
        cmd += [*(["--max-tokens", str(max_tokens)] if max_tokens else []), *(["--block-size", str(block_size)] if block_size else [])]
        print(f"reviews with prefix caching {'on' if flag else 'off'} ...", flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if done.returncode:
            sys.exit(done.stderr[-4000:])
        results[flag] = json.loads(work.with_suffix(f".{flag}.json").read_text())["reviewers"]

    off, on = results[False], results[True]
    n_req = sum(r["requests"] for r in on)
    print(f"\npeer review of {run_dir} ({n_req} requests, {len(on)} reviewers: {', '.join(r['reviewer'] for r in on)}), "
          f"KV block {on[0]['block_size']} tokens, {os.cpu_count()} CPUs")
    print("| prefix caching | prompt tokens | served from cache | computed | completion tokens | seconds | vs off |")
    print("|---|---|---|---|---|---|---|")
    base = sum(r["seconds"] for r in off)
    for name, rows in (("off", off), ("on", on)):
        prompt, cached = sum(r["prompt_tokens"] for r in rows), sum(r["cached_tokens"] for r in rows)
        seconds = sum(r["seconds"] for r in rows)
        print(f"| {name} | {prompt} | {cached} ({cached / prompt:.1%}) | {prompt - cached} | "
              f"{sum(r['completion_tokens'] for r in rows)} | {seconds:.1f} | {seconds / base:.2f} |")
    print("per reviewer, caching on (a later reviewer sharing the engine also hits prompts an earlier one sent):")
    for r in on:
        print(f"  {r['reviewer']}: {r['cached_tokens']}/{r['prompt_tokens']} prompt tokens from cache "
              f"({r['cached_tokens'] / r['prompt_tokens']:.1%}), {r['seconds']:.1f} s")
    same = sum(a == b for x, y in zip(off, on) for a, b in zip(x["texts"], y["texts"]))
    print(f"identical reviews with and without caching: {same}/{n_req}")


if __name__ == "__main__":
    main()
