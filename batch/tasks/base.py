"""Shared pieces of the task layer: question and verdict types, data errors,
and the loading frame every task plugs into.

A task reads either its bundled original files (batch/data/<task>/), a
directory holding fresher copies of those same files, or, through the
`datasets` library and strictly offline, a Hugging Face dataset id or a local
data file. All three routes end in the task's single row -> Question converter.
A single file given for both splits says which split each row is (a `split` field).
"""
from __future__ import annotations

import json
import os
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapd.local_teachers.registry import hub_snapshot

from . import grading
from .grading import Graded

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SPLITS = ("train", "test")

# Local data files handed to `datasets` directly, by suffix -> builder name.
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """Bad input data. The message names the file, and where they apply the
    row (1-based line, record or index) and the field."""

    def __init__(self, message: str, *, file: str | None = None,
                 row: int | None = None, field: str | None = None):
        super().__init__(message)
        self.file, self.row, self.field = file, row, field


class MissingFileError(DataError, FileNotFoundError):
    """A data file or directory that is not there (catchable as either base)."""


def data_error(file: Any, problem: str, row: int | None = None,
               field: str | None = None, line: int | None = None) -> DataError:
    """Build a DataError whose message reads 'FILE: row N (line L): field 'F': PROBLEM'."""
    parts = [str(file)]
    if row is not None:
        parts.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
    elif line is not None:
        parts.append(f"line {line}")
    if field is not None:
        parts.append(f"field {field!r}")
    parts.append(problem)
    return DataError(": ".join(parts), file=str(file), row=row, field=field)


@dataclass(frozen=True)
class Question:
    id: str
    text: str  # exactly what a model is shown
    gold: str  # canonical gold answer (see each task)
    options: tuple[str, ...] = ()  # choice tasks only, without letter prefixes
    solution: str = ""  # a worked solution or supporting facts, where the task has them


# ---------------------------------------------------------------- field access

_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", list: "a list"}


def get_field(row: Any, name: str, kind: type, file: Any, rownum: int) -> Any:
    """Return row[name], checked to be of `kind`; otherwise raise a DataError.

    `kind=float` accepts any int or float; bools never pass as numbers because
    JSON true/false in a numeric field is a data bug, not a 1/0.
    """
    if not isinstance(row, Mapping):
        raise data_error(file, f"expected an object, got {type(row).__name__}", rownum)
    # datasets fills absent columns with None, so None means missing too.
    if row.get(name) is None:
        raise data_error(file, "missing", rownum, name)
    value = row[name]
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise data_error(file, f"expected {_TYPE_NAMES.get(kind, kind.__name__)}, "
                               f"got {type(value).__name__}", rownum, name)
    if kind is str and not value.strip():
        raise data_error(file, "empty", rownum, name)
    return value


# ------------------------------------------------------------- original files

def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such file", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise data_error(path, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_jsonl(path: Path) -> Iterable[tuple[int, Any]]:
    """Yield (0-based line index, parsed object) for each non-blank line."""
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends.
    for index, line in enumerate(read_text(path).split("\n")):
        if not line.strip():
            continue
        try:
            yield index, json.loads(line)
        except json.JSONDecodeError as exc:
            raise data_error(path, f"not valid JSON ({exc.msg})", index + 1) from None


def read_json_array(path: Path) -> list[Any]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        # One document: no row to name yet, so report the text line of the fault.
        raise data_error(path, f"not valid JSON ({exc.msg})", line=exc.lineno) from None
    if not isinstance(data, list):
        raise data_error(path, f"expected a JSON array, got {type(data).__name__}")
    return data


# ------------------------------------------------------------- datasets route

def _import_datasets():
    # Evaluation must never reach the network: force offline mode unless the
    # caller set these explicitly, and do it before `datasets` reads them.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    return datasets


def dataset_rows(source: str | os.PathLike, split: str, default_configs: Mapping[str, str] | None = None,
                 shared: bool = True) -> list[tuple[int, Mapping]]:
    """(0-based index, row) of `split` from a local data file, a local dataset directory, or a
    Hugging Face dataset id ("owner/name" or "owner/name:config") in the local hub cache or in
    `datasets`' own cache. `shared`: the source holds both splits, so a single file must say
    which split each row is."""
    datasets = _import_datasets()
    text = os.fspath(source)
    path = Path(text).expanduser()
    builder = _FILE_BUILDERS.get(path.suffix.lower())
    if builder:
        if not path.is_file():
            raise MissingFileError(f"{path}: no such file", file=str(path))
        # The whole file, as datasets' one split; its rows' own split marks choose from it.
        rows = _load(datasets, text, "train", builder, data_files={"train": str(path)})
        return marked_rows(rows, split, text, shared)
    if path.is_dir():
        rows = _load(datasets, text, split, str(path))
    elif text.startswith(("/", ".", "~")):
        raise MissingFileError(f"{text}: no such file or directory", file=text)
    else:
        name, _, config = text.partition(":")
        snapshot = hub_snapshot(name, "dataset")
        rows = _load(datasets, text, split, str(snapshot) if snapshot else name,
                     config or (default_configs or {}).get(name))
    return list(enumerate(rows))


def _load(datasets, label: str, split: str, *args, **kwargs):
    try:
        return datasets.load_dataset(*args, split=split, **kwargs)
    except Exception as exc:  # datasets raises many types; all mean "not usable offline"
        raise DataError(f"{label}: could not load split {split!r} offline "
                        f"({type(exc).__name__}: {exc})", file=label) from exc


def marked_rows(rows, split: str, file: str, shared: bool) -> list[tuple[int, Mapping]]:
    """The rows of one data file that belong to `split`: those whose `split` field names it, or,
    in a file given for this split alone (`shared` false) without that field, all of them.
    Indexes stay the file's, so ids and errors point at the row in the file."""
    if "split" not in rows.column_names:
        if shared:
            raise data_error(file, "no row has a 'split' field, so the file cannot be both the train and "
                                   "the test split: add 'split': 'train' or 'test' to each row, or give "
                                   "each split its own file with --train-data and --test-data")
        return list(enumerate(rows))
    marks = rows["split"]
    for index, mark in enumerate(marks):
        if mark not in SPLITS:
            raise data_error(file, f"expected one of {', '.join(SPLITS)}, got {mark!r}", index + 1, "split")
    chosen = [(index, row) for index, (mark, row) in enumerate(zip(marks, rows)) if mark == split]
    if not chosen:
        raise data_error(file, f"no row has 'split': {split!r}", field="split")
    return chosen


# ------------------------------------------------------------------ leak check

def normalised(text: str) -> str:
    """Question text as the leak check compares it: casefolded, whitespace collapsed,
    punctuation at either end stripped."""
    return " ".join(text.casefold().split()).strip(string.punctuation + " ")


def shared_questions(test: list[Question], train: list[Question]) -> list[Question]:
    """The questions of `test` whose normalised text is also a question of `train`."""
    seen = {normalised(q.text) for q in train}
    return [q for q in test if normalised(q.text) in seen]


# ----------------------------------------------------------------------- Task

class Task:
    """One evaluation task. Subclasses set the attributes and the three hooks."""

    name: str = ""
    family: str = ""  # "math" | "yesno" | "choice"
    note: str = ""
    hf_configs: Mapping[str, str] = {}  # dataset id -> config used when none is given

    def load(self, split: str, source: str | os.PathLike | None = None, shared: bool = True) -> list[Question]:
        """The questions of `split`: from the bundled originals, or from `source`, a folder of
        original files or what `dataset_rows` reads. `shared` (as --data): `source` holds both
        splits; otherwise (--train-data, --test-data) it is given for this split alone."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if source is None:
            return self.read_originals(DATA_DIR / self.name, split)
        path = Path(os.fspath(source)).expanduser()
        if path.is_dir() and (path / self.original_name(split)).is_file():
            return self.read_originals(path, split)
        label = os.fspath(source)
        return [self.from_row(row, i, label, split)
                for i, row in dataset_rows(source, split, self.hf_configs, shared)]

    def source_label(self, split: str, source: str | os.PathLike | None) -> str:
        """Where `split` is read from, as messages name it."""
        return os.fspath(source) if source is not None else str(DATA_DIR / self.name / self.original_name(split))

    def grade(self, completion: str, question: Question) -> Graded:
        if self.family == "math":
            return grading.grade_number(completion, question.gold)
        if self.family == "yesno":
            return grading.grade_yesno(completion, question.gold)
        if self.family == "choice":
            return grading.grade_choice(completion, question.gold, question.options)
        raise ValueError(f"task {self.name!r} has unknown family {self.family!r}")

    # Hooks -------------------------------------------------------------
    def original_name(self, split: str) -> str:
        """File name of the original data for `split` (relative to the data dir)."""
        raise NotImplementedError

    def read_originals(self, directory: Path, split: str) -> list[Question]:
        raise NotImplementedError

    def from_row(self, row: Mapping, index: int, file: str, tag: str) -> Question:
        """Convert one record (0-based `index`; errors report index + 1).
        `tag` names the part of the data in generated ids, e.g. "train"."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<Task {self.name} ({self.family})>"
