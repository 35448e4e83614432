"""One interface over the inference backends: a list of requests in, completions with token
counts out, in request order. A stage never knows which backend runs it.

``ChatFormat`` is how a model's prompts become text and tokens, for its engines and for training
alike; ``split_reasoning`` parts a reasoning model's thinking from its answer."""
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


# The chat template of a model without one (a base model): every turn "Role:" on a line of its own,
# then its text; an assistant turn ends with the EOS token. The generation prompt ends with a line
# break, so the answer starts on a fresh line, with no space its tokens would have to begin with.
# (Line breaks after a tag are written as values: transformers renders with trim_blocks, which drops them.)
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}:\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:\\n' }}{% endif %}"
)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_SENTINEL = "\x00MAPD-RESPONSE\x00"


class ChatFormat:
    """One model's prompts as text and tokens: its chat template (PLAIN_TEMPLATE when it has none)
    with its entry's ``chat_template_kwargs``. The engines render requests with it and training
    renders records with it, so the student is trained on exactly the prompts it answers."""

    def __init__(self, tokenizer, chat_template_kwargs: dict | None = None):
        self.tokenizer = tokenizer
        self.kwargs = dict(chat_template_kwargs or {})
        self.template = None if getattr(tokenizer, "chat_template", None) else PLAIN_TEMPLATE
        bos = tokenizer.bos_token
        adds_bos = bos is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
        self.bos = [tokenizer.bos_token_id] if adds_bos else []

    def render(self, messages, add_generation_prompt: bool = True) -> str:
        """``messages``: ((role, content), ...)."""
        chat = [{"role": role, "content": content} for role, content in messages]
        return self.tokenizer.apply_chat_template(chat, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt, **self.kwargs)

    def ids(self, text: str) -> list[int]:
        """The tokens of rendered text: the template holds its special tokens, so the tokenizer adds
        none of its own, except a BOS it always adds (its model was trained so) and the text leaves out."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.bos + ids if self.bos and not text.startswith(self.tokenizer.bos_token) else ids

    def end_of_turn(self) -> str:
        """The text the template puts after an assistant message, stripped of whitespace
        (``<|im_end|>`` for ChatML, ``</s>`` for Llama 2, ``<|eot_id|>`` for Llama 3); the
        tokenizer's EOS token when the template adds nothing."""
        text = self.render((("user", "x"), ("assistant", _SENTINEL)), add_generation_prompt=False)
        eot = text[text.index(_SENTINEL) + len(_SENTINEL):].strip() or self.tokenizer.eos_token
        if not eot:
            raise ValueError("the chat template ends assistant turns with nothing and the tokenizer has no EOS token")
        return eot


def split_reasoning(text: str, opened: bool = False) -> tuple[str | None, str]:
    """(reasoning, answer) of a reasoning model's completion: the text of the <think>...</think>
    block it opens with (None when it has none), and what follows, which is all graders, review
    parsers and records read. ``opened``: its prompt ended inside the block (a template that puts
    <think> in the generation prompt), so the completion holds only </think>. A block never closed
    was cut inside the reasoning: all of it is reasoning and the answer is empty."""
    head = text.lstrip()
    if head.startswith(THINK_OPEN):
        opened, head = True, head[len(THINK_OPEN):]
    if not opened:
        return None, text
    reasoning, closed, answer = head.partition(THINK_CLOSE)
    return reasoning.strip(), (answer.lstrip() if closed else "")


def opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt ends inside a <think> block."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


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
    reasoning: str | None = None   # a reasoning model's thinking, split off ``text`` (see split_reasoning)


@dataclass
class Usage:
    """Counters of one engine's life, for the stage summaries."""
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    skipped_too_long: int = 0
    seconds: float = 0.0


class Engine:
    """Common part of every backend: chat rendering, context-length checks, the reasoning split,
    usage counters.
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
        self.chat = ChatFormat(self.tokenizer, spec.chat_template_kwargs)
        log.info("loaded model %s with %s in %.1fs", spec.name, spec.engine, time.perf_counter() - t0)

    def generate(self, requests: list[Request], adapter: str | None = None) -> list[Completion]:
        """Completions in request order; ``adapter`` is a peft LoRA folder applied to the model. A
        reasoning model's (``spec.thinks``) text is its answer, its thinking in ``reasoning``."""
        prompts = [self.chat.render(r.messages) for r in requests]
        ids = [self.chat.ids(p) for p in prompts]
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
            reasoning, text = split_reasoning(text, opens_thinking(prompts[i])) if self.spec.thinks and i in results \
                else (None, text)
            completions.append(Completion(r.id, prompts[i], text, len(ids[i]), n_out, reason, reasoning))
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
