"""The configuration of a run: one file, ``<run>/config.yaml``, written by the first command
that does work on the run and read by every later one (and by every SLURM job). ``RunConfig``
owns the format: load, save, validate (errors name the key and the file) and compare."""
from __future__ import annotations

import dataclasses
import hashlib
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .shards import atomic_write

DEFAULT_STUDENT = "smollm2-135m-instruct"
DEMO_COMMITTEE = ("demo-teacher-a", "demo-teacher-b", "demo-teacher-c")
PAPER_SEED = 731
SELECTIONS = ("paper", "all")
ENGINES = ("vllm", "transformers")
GOLD_HINTS = ("answer", "solution")
EVAL_SAMPLINGS = ("greedy", "paper")
CONFIG_FILE = "config.yaml"
AS_LIMIT = object()   # RunConfig.test_limit left out


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class RunConfig:
    task: str
    run_dir: Path                       # where config.yaml lies; not saved in it
    student: str = DEFAULT_STUDENT      # registry name, YAML path, model folder or cached hub repo id
    engine: str | None = None           # overrides every model's registry engine (vllm | transformers)
    data: str | None = None             # both splits: None (bundled), a folder, a file marking rows' split, a hub id
    limit: int | None = None            # first N questions of the train split
    train_data: str | None = None       # the train split's own source, over data
    test_data: str | None = None        # the test split's own source, over data
    # First N of the test split. Left out: limit's N, which cut both splits in a config.yaml saved
    # before test_limit was (such a run keeps its questions and done stages); a new run from the
    # command line sets it, None (every question) unless --test-limit is given.
    test_limit: int | None = AS_LIMIT   # type: ignore[assignment]
    seed: int = PAPER_SEED
    num_shards: int = 1
    teachers: tuple[str, ...] = DEMO_COMMITTEE   # as student, one per teacher
    policy: str = "default"             # acceptance preset (mapd.batch.committee.PRESETS)
    policy_overrides: dict = field(default_factory=dict)   # Policy fields over the preset
    selection: str = "paper"            # paper: one rationale + one feedback per question; all
    feedback: bool = True               # False: the no-feedback ablation
    keep_cut: bool = False              # True: completions cut at max_tokens are reviewed and trained on
    gold_hint: str = "solution"         # feedback and review prompts show: answer | solution (where the task has one)
    eval_sampling: str = "greedy"       # greedy | paper (the authors' T=0.3, top_p=0.9, eval_samples answers each)
    eval_samples: int = 3               # answers per test question with eval_sampling paper
    train_preset: str = "qlora"         # mapd.training.PRESETS: qlora | paper
    train_overrides: dict = field(default_factory=dict)    # TrainConfig fields over the preset
    init_adapter: str | None = None     # a later round: the student's adapter from the round before
    imported: dict | None = None        # committee outputs read from a file (mapd import): {file, sha256}

    def __post_init__(self):
        if self.test_limit is AS_LIMIT:
            object.__setattr__(self, "test_limit", self.limit)
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        object.__setattr__(self, "teachers", tuple(self.teachers))
        object.__setattr__(self, "policy_overrides", dict(self.policy_overrides))
        object.__setattr__(self, "train_overrides", dict(self.train_overrides))

    @property
    def path(self) -> Path:
        return self.run_dir / CONFIG_FILE

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("run_dir")
        d["teachers"] = list(self.teachers)
        return d

    @classmethod
    def from_dict(cls, raw: dict, run_dir: Path, source: str = "the options") -> "RunConfig":
        """A validated configuration; errors name ``source`` and the key."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of settings, got {type(raw).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"run_dir"}
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
        if "task" not in raw:
            raise ConfigError(f"{source}: key 'task': missing")
        hints = typing.get_type_hints(cls)
        for key, value in raw.items():
            _check_type(key, value, hints[key], source)
        cfg = cls(run_dir=run_dir, **raw)
        cfg.validate(source)
        return cfg

    def split_source(self, split: str) -> tuple[str | None, bool]:
        """Where ``split``'s questions come from, and whether that source holds both splits."""
        own = self.train_data if split == "train" else self.test_data
        return (own, False) if own is not None else (self.data, True)

    def split_limit(self, split: str) -> int | None:
        return self.limit if split == "train" else self.test_limit

    @property
    def lora_r(self) -> int:
        """The rank of the run's adapters: train_overrides', else its preset's, else training's default."""
        from mapd.training.config import PRESETS as TRAIN_PRESETS, TrainConfig

        return {**TRAIN_PRESETS.get(self.train_preset, {}), **self.train_overrides}.get("lora_r", TrainConfig.lora_r)

    def validate(self, source: str = "the options") -> None:
        """Values, checked before any work: names the key at fault."""
        from mapd.local_teachers.vllm_engine import max_lora_rank
        from mapd.training.config import PRESETS as TRAIN_PRESETS, TrainConfig

        from .committee import policy_from
        from .tasks import get_task

        def check(key, ok, problem):
            if not ok:
                raise ConfigError(f"{source}: key {key!r}: {problem}")

        def guarded(key, call):
            try:
                call()
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{source}: key {key!r}: {e}") from None

        guarded("task", lambda: get_task(self.task))
        check("engine", self.engine in (None, *ENGINES), f"{self.engine!r} is not one of {', '.join(ENGINES)}")
        for key in ("limit", "test_limit"):
            value = getattr(self, key)
            check(key, value is None or value >= 1, f"must be at least 1, got {value}")
        check("num_shards", self.num_shards >= 1, f"must be at least 1, got {self.num_shards}")
        check("teachers", len(self.teachers) >= 1 and len(set(self.teachers)) == len(self.teachers),
              f"the committee must name one or more distinct teachers, got {list(self.teachers)}")
        check("selection", self.selection in SELECTIONS, f"{self.selection!r} is not one of {', '.join(SELECTIONS)}")
        check("gold_hint", self.gold_hint in GOLD_HINTS, f"{self.gold_hint!r} is not one of {', '.join(GOLD_HINTS)}")
        check("eval_sampling", self.eval_sampling in EVAL_SAMPLINGS,
              f"{self.eval_sampling!r} is not one of {', '.join(EVAL_SAMPLINGS)}")
        check("eval_samples", self.eval_samples >= 1, f"must be at least 1, got {self.eval_samples}")
        guarded("policy", lambda: policy_from(self.policy))
        guarded("policy_overrides", lambda: policy_from(self.policy, self.policy_overrides))
        check("train_preset", self.train_preset in TRAIN_PRESETS,
              f"{self.train_preset!r} is not one of {', '.join(TRAIN_PRESETS)}")
        check("imported", self.imported is None or (set(self.imported) == {"file", "sha256"}
                                                    and all(isinstance(v, str) for v in self.imported.values())),
              f"expected a mapping of 'file' and 'sha256' (strings), got {self.imported!r}")
        known = {f.name for f in dataclasses.fields(TrainConfig)} - {"base_model", "records", "out_dir"}
        check("train_overrides", set(self.train_overrides) <= known,
              f"unknown field(s) {sorted(set(self.train_overrides) - known)}; allowed: {sorted(known)}")
        if isinstance(self.lora_r, int):
            # vLLM answers with the adapters (the distilled eval on GPUs, a later round's exam): a rank
            # it cannot serve is refused now, whatever the engine here, not after training.
            guarded("train_overrides", lambda: max_lora_rank(self.lora_r))

    def save(self) -> Path:
        """Write config.yaml (with its hash) into the run directory; returns its path."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        # Array tasks of one run may write it at the same time: never leave it half-written.
        atomic_write(self.path, lambda f: f.write(f"# config hash: {digest}\n{text}".encode()))
        return self.path

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        path = Path(run_dir) / CONFIG_FILE
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file; start the run with `mapd distill --task ...` "
                              "(or any stage command), which writes it") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        return cls.from_dict(raw, Path(run_dir), str(path))

    def differences(self, other: "RunConfig") -> list[str]:
        """``key: mine -> other`` for every saved setting that differs."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]


def _check_type(key: str, value, hint, source: str) -> None:
    """Types of the YAML values: int is not bool, a tuple field takes a list of strings."""
    args = typing.get_args(hint)
    allowed = [a for a in args if a is not type(None)] if args and type(None) in args else [hint]
    if value is None and type(None) in args:
        return
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if origin is tuple and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if origin in (str, bool, dict) and isinstance(value, origin):
            return
    names = {tuple: "a list of names", str: "a string", int: "an integer", bool: "true or false", dict: "a mapping"}
    want = " or ".join(names.get(typing.get_origin(k) or k, str(k)) for k in allowed)
    raise ConfigError(f"{source}: key {key!r}: expected {want}{' or null' if type(None) in args else ''}, "
                      f"got {value!r}")


def request_seed(seed: int, *parts: str) -> int:
    """A per-request seed that depends only on the run seed and the request's identity, so a
    rerun or a different sharding samples the same text for the same request."""
    return _seed_of(":".join([str(seed), *parts]))


def request_seeds(seed: int, fixed: tuple[str, ...], varying: Iterable[tuple[str, ...]]) -> list[int]:
    """``request_seed(seed, *fixed, *parts)`` for each ``parts`` of ``varying``: a stage's millions
    of requests share their first parts, joined once."""
    head = ":".join([str(seed), *fixed, ""])
    return [_seed_of(head + ":".join(parts)) for parts in varying]


def _seed_of(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def shard_slice(items: list, shard: int, num_shards: int) -> list:
    """Contiguous block ``shard`` of ``num_shards`` nearly equal blocks."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is outside 0..{num_shards - 1}")
    n = len(items)
    return items[shard * n // num_shards:(shard + 1) * n // num_shards]
