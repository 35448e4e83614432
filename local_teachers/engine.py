"""One interface over the inference backends: a list of requests in, completions with token
counts out, in request order. A stage never knows which backend runs it."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace

from .registry import ModelSpec, Sampling, require_local
from .threads import fit_threads

log = logging.getLogger(__name__)

# Nothing in this project may reach a hub or send telemetry.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def go_offline() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


@dataclass(frozen=True)
class Request:
    id: str
    messages: tuple[tuple[str, str], ...]   # ((role, content), ...), rendered with the chat template
    sampling: Sampling
    seed: int


@dataclass(frozen=True)
class Completion:
    id: str
    prompt: str              # the rendered prompt text the model saw
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str       # "stop", "length", or "prompt_too_long" (not generated)


@dataclass
class Usage:
    """Counters of one engine's life, for the stage summaries."""
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    skipped_too_long: int = 0
    seconds: float = 0.0


class Engine:
    """Common part of every backend: chat rendering, context-length checks, usage counters.
    Backends implement ``_load``, ``_release`` and
    ``_generate(prompt_ids, requests, adapter) -> [(text, n_tokens, reason)]``."""

    def __init__(self, spec: ModelSpec):
        go_offline()
        require_local(spec)
        fit_threads()
        self.spec = spec
        self.usage = Usage()
        t0 = time.perf_counter()
        self.tokenizer = self._load()
        log.info("loaded model %s with %s in %.1fs", spec.name, spec.engine, time.perf_counter() - t0)

    def render(self, messages) -> str:
        chat = [{"role": role, "content": content} for role, content in messages]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(content for _, content in messages) + "\n\n"

    def generate(self, requests: list[Request], adapter: str | None = None) -> list[Completion]:
        """Completions in request order; ``adapter`` is a peft LoRA folder applied to the model."""
        prompts = [self.render(r.messages) for r in requests]
        # The template already holds the special tokens, so do not add them twice.
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        limit = self.spec.max_model_len
        fits = [i for i, x in enumerate(ids) if len(x) < limit]
        results: dict[int, tuple[str, int, str]] = {}
        if fits:
            t0 = time.perf_counter()
            # Never ask for more new tokens than the context has room for.
            capped = [_cap(requests[i], limit - len(ids[i])) for i in fits]
            outs = self._generate([ids[i] for i in fits], capped, adapter)
            self.usage.seconds += time.perf_counter() - t0
            results.update(zip(fits, outs))
        completions = []
        for i, r in enumerate(requests):
            text, n_out, reason = results.get(i, ("", 0, "prompt_too_long"))
            completions.append(Completion(r.id, prompts[i], text, len(ids[i]), n_out, reason))
        skipped = len(requests) - len(fits)
        if skipped:
            log.warning("%d of %d prompts are longer than %s's context of %d tokens: skipped",
                        skipped, len(requests), self.spec.name, limit)
        self.usage.requests += len(requests)
        self.usage.skipped_too_long += skipped
        self.usage.prompt_tokens += sum(len(ids[i]) for i in fits)
        self.usage.completion_tokens += sum(c.completion_tokens for c in completions)
        return completions

    def close(self) -> None:
        """Free the model's memory before another one loads."""
        import gc

        self._release()
        gc.collect()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def _load(self):
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _generate(self, prompt_ids: list[list[int]], requests: list[Request],
                  adapter: str | None) -> list[tuple[str, int, str]]:
        raise NotImplementedError


def _cap(request: Request, room: int) -> Request:
    if request.sampling.max_tokens <= room:
        return request
    return replace(request, sampling=replace(request.sampling, max_tokens=room))
