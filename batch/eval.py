"""EVAL: the student answers the test split greedily, once as the base model and once with the
distilled adapter, graded by the same graders as the exam; then the results table."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mapd.local_teachers.registry import load_spec

from .config import RunConfig
from .exam import StudentAnswers, with_lora
from .shards import atomic_write
from .stage import Stage

VARIANTS = ("base", "distilled")


class Eval(StudentAnswers):
    name = "eval"
    split = "test"

    def __init__(self, cfg: RunConfig, variant: str, adapter: Path | None = None, needs: list[Stage] = ()):
        """``adapter``: the peft LoRA folder the distilled variant answers with; ``needs``: the
        stage that writes it."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown eval variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if (variant == "distilled") != (adapter is not None):
            raise ValueError("the distilled variant needs an adapter, and only it")
        spec = load_spec(cfg.student).with_engine(cfg.engine)
        # Greedy, so the numbers repeat; both variants share one engine, so LoRA is on for both.
        spec = with_lora(dataclasses.replace(
            spec, sampling=dataclasses.replace(spec.sampling, temperature=0.0, top_p=1.0)))
        super().__init__(cfg, list(needs), spec, Path(cfg.run_dir) / "eval" / variant, part=variant,
                         adapter=str(adapter) if adapter else None)
        self.variant = variant

    @classmethod
    def build(cls, graph) -> list[Stage]:
        """Base and distilled; a later round (``init_adapter``) compares with round 1's base."""
        train = graph.one("train")
        distilled = cls(graph.cfg, "distilled", train.adapter, needs=[train])
        return [distilled] if graph.cfg.init_adapter else [cls(graph.cfg, "base"), distilled]

    def settings(self) -> dict:
        return {**super().settings(), "variant": self.variant}


def results_table(base: Eval, distilled: Eval, round_: int = 1) -> dict:
    """Accuracy before and after, written as results.json and results.md in the distilled
    student's eval folder (a later round's base is round 1's)."""
    b, d = base.summary(), distilled.summary()
    result = {
        "task": base.cfg.task, "student": base.spec.name, "round": round_, "test_size": b["questions"],
        "base_accuracy": b["accuracy"], "distilled_accuracy": d["accuracy"],
        "base_unparseable": b["unparseable"], "distilled_unparseable": d["unparseable"],
        "adapter": distilled.adapter,
    }
    folder = Path(distilled.cfg.run_dir) / "eval"
    atomic_write(folder / "results.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    atomic_write(folder / "results.md", lambda f: f.write(format_results(result).encode()))
    return result


def format_results(*results: dict) -> str:
    """One line per round."""
    return (
        "| task | student | round | base accuracy | distilled accuracy | unparseable (base / distilled) | test size |\n"
        "|---|---|---|---|---|---|---|\n"
    ) + "".join(
        f"| {r['task']} | {r['student']} | {r['round']} | {r['base_accuracy']:.1%} | {r['distilled_accuracy']:.1%} | "
        f"{r['base_unparseable']} / {r['distilled_unparseable']} | {r['test_size']} |\n" for r in results)
