"""The exam, teach and review stages of a run whose committee outputs come from a file
(``RunConfig.imported``, set by ``mapd import``). Each is its stage's own code with the file in
the place of the model: the stage renders its prompts, grades the answers and rationales, reads
the review scores and writes its shards and manifests; the file's texts stand in for what the
model would have generated. So a stage's identity is its usual one, its model's identity being
the file's checksum: the dataset, train and eval stages downstream take the shards as any others,
and an imported file that changes redoes what read what changed."""
from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path

from mapd.local_teachers.engine import Completion, Usage
from mapd.local_teachers.registry import ModelSpec, load_spec

from ..exam import Exam, StudentAnswers
from ..prompts import load_prompt
from ..review import Review
from ..stage import ModelStage, Stage
from ..teach import Teach
from . import committee_file
from .committee_file import CommitteeFile, Text


@dataclasses.dataclass(frozen=True)
class FileModel(ModelSpec):
    """A "model" whose outputs are read from the imported file; it never loads."""
    sha256: str = ""

    def identity(self) -> str:
        return f"imported file {self.sha256[:16]}"


class _Served:
    """The engine pool and the engine of an imported stage: ``generate`` answers each request with
    the file's text for it, by the stage's own request id, and generates nothing (usage stays 0).
    The file is read only when a shard is to be written."""

    def __init__(self, stage: "FromFile"):
        self.stage = stage
        self.usage = Usage()
        self.texts: dict[str, Text] = {}

    def get(self, spec: ModelSpec) -> "_Served":
        self.texts = self.stage.served()
        return self

    def generate(self, requests, adapter=None) -> list[Completion]:
        return [Completion(r.id, r.messages[-1][1], self.texts[r.id].text, 0, 0, self.texts[r.id].finish_reason)
                for r in requests]


class FromFile(ModelStage):
    """What the imported stages share: run with the file whatever pool is given."""

    def served(self) -> dict[str, Text]:
        """The file's texts for this stage, by request id."""
        raise NotImplementedError

    @property
    def committee_file(self) -> CommitteeFile:
        return self.exam.committee_file

    def run(self, shards=None, pool=None) -> dict:
        return super().run(shards, _Served(self))

    def outcome(self, figures: dict) -> str:
        return f"{figures['stage']}: {figures['shards_run']} shard(s) written from {self.cfg.imported['file']}"


def file_model(cfg, name: str) -> FileModel:
    """``name``'s outputs in the run's imported file (its path is where SLURM jobs must see it)."""
    return FileModel(name=name, path=cfg.imported["file"], gpus=0, source=f"imported from {cfg.imported['file']}",
                     sha256=cfg.imported["sha256"])


class ImportedExam(StudentAnswers, FromFile):
    """The student's wrong answers, one per question of the file (in the train split's order)."""
    name = "exam"

    def __init__(self, graph):
        cfg = graph.cfg
        if cfg.init_adapter:
            raise ValueError(f"{cfg.run_dir}: a run whose committee outputs are imported has one round (a later "
                             "round's student takes the exam itself)")
        super().__init__(cfg, [], file_model(cfg, load_spec(cfg.student).name), Path(cfg.run_dir) / "exam")
        self.graph = graph     # the review stages, built after this one, say what the file must hold

    @classmethod
    def build(cls, graph) -> list[Stage]:
        return [cls(graph)]

    @cached_property
    def committee_file(self) -> CommitteeFile:
        reviews = self.graph.named("review")
        return committee_file.read(
            self.cfg.imported["file"], self.cfg.imported["sha256"], self.task, StudentAnswers.questions.func(self),
            self.cfg.teachers, self.cfg.feedback, set(reviews[0].prompts) if reviews else set(), self.cfg.keep_cut)

    @cached_property
    def questions(self):
        return self.committee_file.questions

    def served(self) -> dict[str, Text]:
        return {e.question.id: e.answer for e in self.committee_file.entries}


class ImportedTeach(Teach, FromFile):
    def __init__(self, exam: ImportedExam, teacher: str):
        # Teach's set-up, with the file in the place of the teacher's registry entry.
        ModelStage.__init__(self, exam.cfg, [exam], file_model(exam.cfg, teacher),
                            Path(exam.cfg.run_dir) / "teach" / teacher, part=teacher)
        self.exam = exam
        self.rationale_prompt = exam.prompt
        self.feedback_prompt = load_prompt("teacher_feedback", exam.task.family)

    def served(self) -> dict[str, Text]:
        # Teach._request's ids: "<kind>:<question id>".
        return {f"{kind}:{e.question.id}": text for e in self.committee_file.entries
                for (teacher, kind), text in e.written.items() if teacher == self.part}


class ImportedReview(Review, FromFile):
    def served(self) -> dict[str, Text]:
        # Review.rows' ids: "<author>:<kind>:<question id>".
        return {f"{author}:{kind}:{e.question.id}": text for e in self.committee_file.entries
                for (reviewer, author, kind), text in e.reviews.items() if reviewer == self.part}


# The kinds of stage that read the file in a run with ``imported`` (batch/graph.py).
IMPORTED: dict[type[Stage], type[Stage]] = {Exam: ImportedExam, Teach: ImportedTeach, Review: ImportedReview}
