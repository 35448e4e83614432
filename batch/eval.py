"""EVAL: the student answers the test split, once as the base model and once with the distilled
adapter, graded by the same graders as the exam; then the results table. Greedy by default, so
the numbers repeat; ``eval_sampling: paper`` samples as the authors did (temperature 0.3, top_p
0.9) ``eval_samples`` answers per question, each seeded, and reports their mean and spread."""
from __future__ import annotations

import dataclasses
import json
from functools import cached_property
from pathlib import Path

from mapd.local_teachers.registry import load_spec

from .config import RunConfig
from .exam import StudentAnswers, merged_copy
from .shards import atomic_write
from .stage import Stage
from .tasks import DataError, shared_questions

VARIANTS = ("base", "distilled")
PAPER_SAMPLING = (0.3, 0.9)   # the authors' evaluation: temperature, top_p


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
        temperature, top_p = PAPER_SAMPLING if cfg.eval_sampling == "paper" else (0.0, 1.0)
        spec = dataclasses.replace(
            spec, sampling=dataclasses.replace(spec.sampling, temperature=temperature, top_p=top_p))
        # The base variant loads the plain student, as the exam does (the pool keeps a loaded one).
        super().__init__(cfg, list(needs), spec, Path(cfg.run_dir) / "eval" / variant, part=variant,
                         adapter=str(adapter) if adapter else None, merged=merged_copy(cfg.run_dir))
        self.variant = variant
        self.samples = cfg.eval_samples if cfg.eval_sampling == "paper" else 1

    @classmethod
    def build(cls, graph) -> list[Stage]:
        """Base and distilled; a later round (``init_adapter``) compares with round 1's base."""
        train = graph.one("train")
        distilled = cls(graph.cfg, "distilled", train.adapter, needs=[train])
        return [distilled] if graph.cfg.init_adapter else [cls(graph.cfg, "base"), distilled]

    def settings(self) -> dict:
        return {**super().settings(), "variant": self.variant}

    @cached_property
    def split_questions(self):
        """The test split, refused when any of its questions is also one of the train split's."""
        test = self.load_split(self.split)
        leaked = shared_questions(test, self.load_split("train"))
        if leaked:
            where = {split: self.task.source_label(split, self.cfg.split_source(split)[0])
                     for split in ("train", "test")}
            raise DataError(f"{self.key}: {len(leaked)} of the {len(test)} test questions ({where['test']}) are also "
                            f"train questions ({where['train']}), compared by text (case, spacing and end punctuation "
                            f"aside), e.g. {leaked[0].id}: the student would be tested on what it was trained on; "
                            "give a test split without them")
        return test


def results_table(base: Eval, distilled: Eval, round_: int = 1) -> dict:
    """Accuracy before and after, written as results.json and results.md in the distilled
    student's eval folder (a later round's base is round 1's)."""
    b, d = base.summary(), distilled.summary()
    result = {
        "task": base.cfg.task, "student": base.spec.name, "round": round_, "test_size": b["questions"],
        "base_accuracy": b["accuracy"], "distilled_accuracy": d["accuracy"], "samples": d["samples"],
        "base_accuracy_std": b["accuracy_std"], "distilled_accuracy_std": d["accuracy_std"],
        "base_unparseable": b["unparseable"], "distilled_unparseable": d["unparseable"],
        "adapter": distilled.adapter,
    }
    folder = Path(distilled.cfg.run_dir) / "eval"
    atomic_write(folder / "results.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    atomic_write(folder / "results.md", lambda f: f.write(format_results(result).encode()))
    return result


def format_accuracy(result: dict, variant: str) -> str:
    """"18.8%", or with several sampled answers per question their mean and spread: "18.8% ± 1.2"."""
    text = f"{result[f'{variant}_accuracy']:.1%}"
    if result.get("samples", 1) > 1:
        text += f" ± {result[f'{variant}_accuracy_std'] * 100:.1f} ({result['samples']} samples)"
    return text


def format_results(*results: dict) -> str:
    """One line per round."""
    return (
        "| task | student | round | base accuracy | distilled accuracy | unparseable (base / distilled) | test size |\n"
        "|---|---|---|---|---|---|---|\n"
    ) + "".join(
        f"| {r['task']} | {r['student']} | {r['round']} | {format_accuracy(r, 'base')} | "
        f"{format_accuracy(r, 'distilled')} | {r['base_unparseable']} / {r['distilled_unparseable']} | "
        f"{r['test_size']} |\n" for r in results)
