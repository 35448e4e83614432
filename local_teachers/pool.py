"""Loading engines: the backend a model entry names, and the pool that keeps the last loaded
engine so one job loads each model once. Backends import ``engine``; this module imports them."""
from __future__ import annotations

import logging

from .engine import Engine
from .registry import ModelSpec

log = logging.getLogger(__name__)


def load_engine(spec: ModelSpec) -> Engine:
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
