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
    the student with ``adapter`` merged in. What never loads it (a plan, a scripted engine, a
    job whose shards are done) never pays for making it; stages name it by what it is made from
    (the student's identity and the adapter's checksums), known before it exists."""
    adapter: str = ""
    make: Callable[[], object] = dataclasses.field(default=lambda: None, compare=False, repr=False)

    @classmethod
    def of(cls, spec: ModelSpec, path: str, adapter: str, make: Callable[[], object]) -> "MadeOnLoad":
        """``spec``'s settings and name, with ``adapter`` merged into its weights in ``path`` by ``make``."""
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(ModelSpec)}
        return cls(**{**fields, "path": path}, adapter=adapter, make=make)


class MergedEngine:
    """The engine of a ``MadeOnLoad`` model. A stage asks for answers with its adapter however it
    is applied (so a scripted engine can answer by it); these weights already hold it, so the
    model answers as it is. Asked for another adapter or none, it refuses."""

    def __init__(self, engine: Engine, adapter: str):
        self.engine, self.adapter = engine, adapter

    def generate(self, requests, adapter: str | None = None):
        if adapter != self.adapter:
            raise ValueError(f"{self.engine.spec.path} holds the adapter {self.adapter} merged in, "
                             f"not {adapter or 'none'}")
        return self.engine.generate(requests)

    def __getattr__(self, name):        # spec, usage, close: the engine's
        return getattr(self.engine, name)


def load_engine(spec: ModelSpec) -> Engine | MergedEngine:
    if isinstance(spec, MadeOnLoad):
        spec.make()
        return MergedEngine(_load(spec), spec.adapter)
    return _load(spec)


def _load(spec: ModelSpec) -> Engine:
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
    """What a loaded engine depends on; sampling settings travel with each request instead. The
    engine renders prompts and splits off the thinking by its entry's settings: entries that differ
    in those load their own."""
    return (spec.path, spec.engine, spec.dtype, spec.gpus, spec.max_model_len,
            spec.gpu_memory_utilization, spec.trust_remote_code, sorted(spec.vllm.items()),
            spec.reasoning, sorted(spec.chat_template_kwargs.items()))
