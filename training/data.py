"""Instruction records -> token examples -> padded batches.

A record (the dataset stage's `records.parquet`) is one user turn (`prompt`) and one assistant
turn (`response`) of a kind, "rationale" or "feedback". It is rendered as the student's engine
renders its prompts (``ChatFormat``: its chat template and chat_template_kwargs, or the plain
template of a model without one): the prompt part is the template with the generation prompt, the
full text is the prompt part + the response + the template's end-of-turn token. Only the response
tokens (and the end-of-turn token) are learnt; the prompt and the padding are labelled -100.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch

from mapd.local_teachers.engine import ChatFormat

from .config import RecordsError

KINDS = ("feedback", "rationale")   # index 0 = feedback (weight alpha), 1 = rationale (1 - alpha)
REQUIRED = ("record_id", "question_id", "kind", "prompt", "response")
IGNORE = -100
MEGA_BATCH = 50     # length grouping sorts within chunks of MEGA_BATCH * batch_size examples


def load_records(path: str | Path) -> pl.DataFrame:
    """The records file's required columns (others, such as provenance, are dropped), checked."""
    path = Path(path)
    if not path.is_file():
        raise RecordsError(f"no records file {path}: run the dataset stage first")
    df = pl.read_parquet(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise RecordsError(f"{path}: missing column(s) {', '.join(missing)}; the training contract needs "
                           f"{', '.join(REQUIRED)}")
    df = df.select(REQUIRED)
    if df.height == 0:
        raise RecordsError(f"{path} holds zero records: the committee accepted nothing to train on "
                           "(see the dataset stage's stats.json), so there is no adapter to train")
    unknown = sorted(set(df["kind"].to_list()) - set(KINDS))
    if unknown:
        raise RecordsError(f"{path}: unknown kind(s) {unknown}; expected {', '.join(KINDS)}")
    nulls = [c for c in ("prompt", "response") if df[c].null_count()]
    if nulls:
        raise RecordsError(f"{path}: null values in column(s) {', '.join(nulls)}")
    return df


@dataclass
class Example:
    record_id: str
    question_id: str
    kind: int                 # index into KINDS
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Encoded:
    examples: list[Example]
    per_kind: dict[str, int]            # records per kind in the file
    truncated: list[str] = field(default_factory=list)   # record ids whose response was cut
    skipped: list[str] = field(default_factory=list)     # record ids whose prompt alone fills max_length

    def counts(self) -> dict:
        return {"records": sum(self.per_kind.values()), "per_kind": self.per_kind,
                "examples": len(self.examples),
                "examples_per_kind": {k: sum(e.kind == i for e in self.examples) for i, k in enumerate(KINDS)},
                "truncated": len(self.truncated), "skipped": len(self.skipped),
                "response_tokens": sum(sum(t != IGNORE for t in e.labels) for e in self.examples)}


class Encoder:
    """Renders and tokenizes records for one tokenizer, as the student's engine does its prompts."""

    def __init__(self, tokenizer, max_length: int, chat_template_kwargs: dict | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chat = ChatFormat(tokenizer, chat_template_kwargs)
        self.eot = self.chat.end_of_turn()

    def tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def encode(self, record_id: str, question_id: str, kind: str, prompt: str,
               response: str) -> tuple[Example | None, bool]:
        """(example, truncated); example is None when the prompt alone fills max_length."""
        p = self.chat.ids(self.chat.render((("user", prompt),)))
        r = self.tokens(response + self.eot)
        room = self.max_length - len(p)
        if room <= 0:
            return None, False
        truncated = len(r) > room
        r = r[:room]
        return Example(record_id, question_id, KINDS.index(kind), p + r, [IGNORE] * len(p) + r, truncated), truncated


def encode_records(df: pl.DataFrame, tokenizer, max_length: int, chat_template_kwargs: dict | None = None) -> Encoded:
    encoder = Encoder(tokenizer, max_length, chat_template_kwargs)
    per_kind = {k: int((df["kind"] == k).sum()) for k in KINDS}
    out = Encoded([], per_kind)
    for row in df.iter_rows(named=True):
        example, truncated = encoder.encode(row["record_id"], row["question_id"], row["kind"], row["prompt"],
                                            row["response"])
        if example is None:
            out.skipped.append(row["record_id"])
            continue
        if truncated:
            out.truncated.append(row["record_id"])
        out.examples.append(example)
    if not out.examples:
        raise RecordsError(f"all {df.height} records were skipped: every prompt alone fills max_length "
                           f"{max_length}; raise max_length")
    return out


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding; attention mask 0 and label -100 on padding; `kind` per row (see KINDS)."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    kind = torch.tensor([e.kind for e in examples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "kind": kind}


def pair_units(examples: list[Example]) -> list[list[int]]:
    """The units batches are made of when pairing: [feedback, rationale] pairs of one question, or
    lone records. A question with n feedback and m rationale records gives max(n, m) pairs, the
    shorter list cycled (so with `--selection all` every record is trained on and every pair holds
    both kinds; a record of the shorter list then appears more than once an epoch). A question with
    one kind only (the no-feedback ablation; a question whose feedback was not accepted or whose
    partner's prompt was too long) gives lone records."""
    by_question: dict[str, tuple[list[int], list[int]]] = {}
    for i, e in enumerate(examples):
        by_question.setdefault(e.question_id, ([], []))[e.kind].append(i)
    units = []
    for feedback, rationale in by_question.values():
        if feedback and rationale:
            units += [[feedback[j % len(feedback)], rationale[j % len(rationale)]]
                      for j in range(max(len(feedback), len(rationale)))]
        else:
            units += [[i] for i in feedback + rationale]
    return units


def plan_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
                 units: list[list[int]] | None = None) -> list[list[int]]:
    """One epoch's batches of example indices, a pure function of its arguments.

    A batch holds batch_size units (`pair_units`; None: every example alone). Pairs and lone
    records never share a batch, so every batch of pairs has both kinds; the batches of lone records
    are shuffled in among them rather than left at the epoch's end. Plain: a seeded shuffle cut
    into batches. Grouped by length: the shuffle is cut into mega-batches of MEGA_BATCH *
    batch_size units, each sorted by the unit's longest record (longest first) and cut into
    batches, and the batches' order is shuffled, so a batch pads little while the epoch stays
    random. Without pairs this is exactly the plan of unpaired training."""
    rng = random.Random(f"mapd-train:{seed}:{epoch}")
    if units is None:
        units = [[i] for i in range(len(lengths))]
    width = [max(lengths[i] for i in u) for u in units]
    sizes = sorted({len(u) for u in units}, reverse=True)
    batches = []
    for size in sizes:
        order = [k for k, u in enumerate(units) if len(u) == size]
        rng.shuffle(order)
        if not group_by_length:
            batches += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
            continue
        mega = MEGA_BATCH * batch_size
        for start in range(0, len(order), mega):
            chunk = sorted(order[start:start + mega], key=lambda k: -width[k])
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if group_by_length or len(sizes) > 1:
        rng.shuffle(batches)
    return [[i for k in b for i in units[k]] for b in batches]


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """The share of token slots in these batches that are padding."""
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 1.0 - real / slots if slots else 0.0
