"""Loading engines: the backend a model entry names, and the pool that keeps the last loaded
engine so one job loads each model once. Backends import ``engine``; this module imports them."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from .engine import Engine
from .registry import ModelSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MadeOnLoad(ModelSpec):
    """A model whose folder (``path``) is written by ``make()`` just before an engine loads it:
    the student with its adapter merged in. What never loads it (a plan, a scripted engine, a
    job whose shards are done) never pays for making it; stages name it by what it is made from
    (the student's identity and the adapter's checksums), known before it exists."""
    make: Callable[[], object] = dataclasses.field(default=lambda: None, compare=False, repr=False)

    @classmethod
    def of(cls, spec: ModelSpec, path: str, make: Callable[[], object]) -> "MadeOnLoad":
        """``spec``'s settings and name, its weights in ``path``, written by ``make``."""
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(ModelSpec)}
        return cls(**{**fields, "path": path}, make=make)


def load_engine(spec: ModelSpec) -> Engine:
    if isinstance(spec, MadeOnLoad):
        spec.make()
    if spec.engine == "vllm":
        from .vllm_engine import VLLMEngine
        return VLLMEngine(spec)
    from .hf_engine import TransformersEngine
    return TransformersEngine(spec)


class EnginePool:
    """Keeps the last loaded engine, so a job whose models share weights (the demo committee,
    or one model used by several stages in a local run) loads them once. Models that differ
    replace each other: a GPU holds one at a time."""

    def __init__(self):
        self.engine: Engine | None = None
        self.loads = 0

    def get(self, spec: ModelSpec) -> Engine:
        if self.engine is None or _weights_key(self.engine.spec) != _weights_key(spec):
            self.close()
            self.engine = load_engine(spec)
            self.loads += 1
        elif self.engine.spec.name != spec.name:
            log.info("%s shares loaded weights with %s: not loading again", spec.name, self.engine.spec.name)
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def __enter__(self) -> "EnginePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _weights_key(spec: ModelSpec) -> tuple:
    """What a loaded engine depends on; sampling settings travel with each request instead."""
    return (spec.path, spec.engine, spec.dtype, spec.gpus, spec.max_model_len,
            spec.gpu_memory_utilization, spec.trust_remote_code, sorted(spec.vllm.items()))
