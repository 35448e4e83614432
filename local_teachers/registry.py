"""Model registry: one small YAML file per model under local_teachers/models/.

A model is named by its file stem (``smollm2-135m-instruct``) or by a path to a YAML file of
the same shape. Paths may use ``${MAPD_CACHE}`` (default ``~/.cache/mapd``) and other
environment variables, so one registry serves a laptop and a cluster.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .fingerprint import model_fingerprint

REGISTRY_DIR = Path(__file__).parent / "models"
ENGINES = ("vllm", "transformers")


def cache_dir() -> Path:
    return Path(os.environ.get("MAPD_CACHE", Path.home() / ".cache" / "mapd"))


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    engine: str = "vllm"
    dtype: str = "bfloat16"
    gpus: int = 1                       # tensor-parallel size; 0 = CPU
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    trust_remote_code: bool = False
    sampling: Sampling = Sampling()
    vllm: dict = field(default_factory=dict)   # extra vllm.LLM(...) arguments
    slurm: dict = field(default_factory=dict)  # sbatch resources (cpus, mem, time, partition, extra); see slurm/README.md
    source: str = ""                    # the YAML file this came from

    def identity(self) -> str:
        """Hash of everything that changes what the model generates: its name in the registry,
        its folder's content and its settings; not where the folder or its YAML lies. Raises
        require_local's error when the folder is not here: its content cannot be known."""
        return self._identity

    @functools.cached_property
    def _identity(self) -> str:
        # Once per loaded entry: a plan asks for it for every shard of every stage.
        require_local(self)
        d = dataclasses.asdict(self)
        for key in ("path", "source", "slurm"):   # where it lies and runs does not change what it generates
            d.pop(key)
        # gpus (tensor-parallel size) and gpu_memory_utilization (the KV cache, hence the batches)
        # stay: they change how sums are split and ordered, so logits differ in the last bits
        # and sampled texts can diverge.
        d["content"] = model_fingerprint(self.path)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def with_engine(self, engine: str | None) -> "ModelSpec":
        return self if engine is None else dataclasses.replace(self, engine=_check_engine(engine, self.source))


def _check_engine(engine: str, source: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"{source}: field 'engine': {engine!r} is not one of {', '.join(ENGINES)}")
    return engine


def known_models() -> list[str]:
    return sorted(p.stem for p in REGISTRY_DIR.glob("*.yaml"))


def load_spec(name_or_path: str) -> ModelSpec:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = REGISTRY_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"unknown model {name_or_path!r}: no file {path}; known models: {', '.join(known_models())}"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in dataclasses.fields(ModelSpec)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}; allowed: {sorted(known - {'source'})}")
    for required in ("name", "path"):
        if required not in raw:
            raise ValueError(f"{path}: field {required!r}: missing")
    os.environ.setdefault("MAPD_CACHE", str(cache_dir()))
    raw["path"] = os.path.expandvars(os.path.expanduser(str(raw["path"])))
    raw["sampling"] = Sampling(**(raw.get("sampling") or {}))
    spec = ModelSpec(**raw, source=str(path))
    _check_engine(spec.engine, spec.source)
    return spec


def require_local(spec: ModelSpec) -> None:
    """Models load by local path only; say how to get a missing one."""
    if not (Path(spec.path) / "config.json").is_file():
        if "$" in spec.path:
            hint = " (set the environment variable it names)"
        elif spec.path.startswith(str(cache_dir())):
            hint = " (run `make model` to convert the embedded default)"
        else:
            hint = ""
        raise FileNotFoundError(f"model {spec.name!r} ({spec.source}): no model folder at {spec.path}{hint}")
