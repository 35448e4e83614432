"""Training on CPU: LoRA on the 4-bit NF4 base (QLoRA, quantize=True) versus LoRA on the
full-precision float32 base (quantize=False), side by side on the same records, seed and steps;
and the float32 path again with the LM head run at every position, as training did before it ran
at the target positions alone (training.loss.target_positions).

    .venv/bin/python bench/train_cpu_path.py [--records 32] [--steps 4] [--batch-size 1] [--threads 0]

The embedded student (SmolLM2-135M-Instruct) trains with the `qlora` preset through the real
`mapd.training.train` (gradient checkpointing, AdamW, the card and log), `--steps` optimizer steps
of `--batch-size` pairs (a question's feedback and rationale) from bench/train_padding.py's records
(GSM8K train, as the dataset stage writes them). Each variant runs in its own process, so its peak
RSS is its own. tokens/s counts real (non-padding) tokens over training-step time, from step 2 on
(the first pays one-time costs), and per CPU second of the process over the same steps (steadier
than wall time on shared cores, at one thread). The losses are the per-kind training losses, step
by step: both variants see the same batches with the same dropout draws, so they compare directly.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from train_padding import build_records

# name -> (quantize, the LM head at every position)
VARIANTS = {"NF4 QLoRA": (True, False), "LoRA, fp32 base": (False, False),
            "LoRA, fp32 base, LM head everywhere": (False, True)}


def one_variant(cfg_json: str, head_everywhere: bool) -> dict:
    import torch

    from mapd.training import TrainConfig, loop, train

    if head_everywhere:     # every position but the last predicts a token (padding's is masked)
        loop.target_positions = lambda labels: torch.arange(labels.shape[1] - 1)
    cfg = TrainConfig(**json.loads(cfg_json))
    cpu_at = []                                       # the process's CPU seconds after each step
    adapter = train(cfg, on_step=lambda step, record: cpu_at.append(time.process_time()))
    return {"card": json.loads((adapter / "card.json").read_text()),
            "log": [json.loads(x) for x in (adapter.parent / "train_log.jsonl").read_text().splitlines()],
            "cpu_at": cpu_at, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _summary(run: dict) -> dict:
    timed = run["log"][1:]                            # step 1 pays the allocator's and kernels' first calls
    seconds = sum(r["seconds"] for r in timed)
    tokens = sum(r["tokens"] for r in timed)
    last = run["log"][-1]
    return {"tokens/s (steps 2..)": tokens / seconds,
            # CPU time barely moves when other jobs share the cores (at one thread; more threads spin)
            "tokens per CPU second (steps 2..)": tokens / (run["cpu_at"][-1] - run["cpu_at"][0]),
            "seconds per step (steps 2..)": seconds / len(timed),
            "load + save seconds": run["card"]["wall_seconds"] - run["card"]["train_seconds"],
            "peak RSS MiB": run["peak_mib"],
            "loss feedback, step 1": run["log"][0]["loss_feedback"],
            "loss rationale, step 1": run["log"][0]["loss_rationale"],
            "loss feedback, last step": last["loss_feedback"],
            "loss rationale, last step": last["loss_rationale"]}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"      # a step may hold one kind only


@click.command()
@click.option("--records", "n_records", default=32, show_default=True,
              help="records built from GSM8K train: a rationale and a feedback per question")
@click.option("--steps", default=4, show_default=True, help="optimizer steps per variant (at least 2)")
@click.option("--batch-size", default=1, show_default=True, help="pairs per batch (the qlora preset has 4)")
@click.option("--max-length", default=512, show_default=True)
@click.option("--threads", default=0, show_default=True, help="CPU threads; 0: every CPU it may use, as training")
@click.option("--model", default="smollm2-135m-instruct", show_default=True)
@click.option("--child", default=None, hidden=True)
@click.option("--head-everywhere", is_flag=True, hidden=True)
def main(n_records, steps, batch_size, max_length, threads, model, child, head_everywhere):
    if child is not None:
        print(json.dumps(one_variant(child, head_everywhere)))
        return
    if steps < 2:
        raise click.BadParameter("at least 2: the first step is not timed", param_hint="--steps")
    from mapd.local_teachers.registry import load_spec
    from mapd.local_teachers.threads import allowed_cpus
    from mapd.training import preset

    threads = threads or len(allowed_cpus())
    env = {**os.environ, "MAPD_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}                   # the CPU path, even on a machine with a GPU
    runs = {}
    with tempfile.TemporaryDirectory(prefix="mapd-train-cpu-path-") as work:
        records = Path(work) / "records.parquet"
        build_records(n_records).write_parquet(records)
        for name, (quantize, head_everywhere) in VARIANTS.items():
            cfg = preset("qlora", base_model=load_spec(model).path, records=str(records),
                         out_dir=str(Path(work) / name), batch_size=batch_size, max_length=max_length,
                         max_steps=steps, quantize=quantize)
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg.to_dict()),
                                  *(["--head-everywhere"] if head_everywhere else [])],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(out.stderr[-5000:])
            runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name}: done ({runs[name]['card']['device']})", flush=True)

    qlora = runs["NF4 QLoRA"]
    counts = qlora["card"]["counts"]
    print(f"\n{counts['examples']} examples of {n_records} records ({counts['pairs']} pairs, {counts['unpaired']} "
          f"lone, {counts['skipped']} skipped), {steps} steps of {batch_size} pair(s), max length {max_length}, "
          f"{threads} thread(s); the same batches in both\n")
    print("| step | " + " | ".join(f"{name}: feedback, rationale" for name in runs) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for rows in zip(*(run["log"] for run in runs.values())):
        print(f"| {rows[0]['step']} | " + " | ".join(f"{_fmt(r['loss_feedback'])}, {_fmt(r['loss_rationale'])}"
                                                     for r in rows) + " |")
    # the two ratios the choices rest on: the CPU's base (LoRA / QLoRA), the LM head's positions
    ratios = {"LoRA / QLoRA": ("LoRA, fp32 base", "NF4 QLoRA"),
              "targets / everywhere": ("LoRA, fp32 base", "LoRA, fp32 base, LM head everywhere")}
    summaries = {name: _summary(run) for name, run in runs.items()}
    print("\n| | " + " | ".join(runs) + " | " + " | ".join(ratios) + " |")
    print("|---" * (len(runs) + len(ratios) + 1) + "|")
    for key in summaries["NF4 QLoRA"]:
        cells = [_fmt(s[key]) for s in summaries.values()]
        for top, bottom in ratios.values():
            a, b = summaries[top][key], summaries[bottom][key]
            cells.append(_fmt(a / b if a is not None and b else None, 2))
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
