"""The one test double for engines: a scripted model and a pool that hands it out. For fast
tests of bookkeeping; every path they cover is also tested with a real engine."""
from __future__ import annotations

from collections.abc import Callable

from mapd.local_teachers.engine import Completion, Request, Usage, split_reasoning


class ScriptedEngine:
    """A model whose completion is ``answer(request, adapter)``, finished for ``finish(text)``
    ("stop" unless told: "length" plays a completion cut at max_tokens). Keeps usage counters as
    a real engine does (a token is a word), every request it saw (unless ``keep_seen`` is False:
    a benchmark at scale measures memory) and its number of generate calls. With ``thinks`` it is
    a reasoning model: its <think> block is split off each text as the real engines do."""

    def __init__(self, answer: Callable[[Request, str | None], str], keep_seen: bool = True,
                 finish: Callable[[str], str] = lambda text: "stop", thinks: bool = False):
        self.answer = answer
        self.keep_seen = keep_seen
        self.finish = finish
        self.thinks = thinks
        self.usage = Usage()
        self.seen: list[Request] = []
        self.calls = 0

    def generate(self, requests, adapter=None):
        self.calls += 1
        out = []
        for r in requests:
            prompt = r.messages[0][1]
            text = self.answer(r, adapter)
            if self.keep_seen:
                self.seen.append(r)
            n_prompt, n_text = len(prompt.split()), len(text.split())
            self.usage.requests += 1
            self.usage.prompt_tokens += n_prompt
            self.usage.completion_tokens += n_text
            self.usage.seconds += 0.001
            reasoning, answer = split_reasoning(text) if self.thinks else (None, text)
            out.append(Completion(r.id, prompt, answer, n_prompt, n_text, self.finish(text), reasoning))
        return out


class ScriptedPool:
    """Hands a stage the engine of its model: ``engines`` by model name, or one engine for all."""

    def __init__(self, engines: dict[str, ScriptedEngine] | ScriptedEngine):
        self.engines = engines
        self.loads = 0

    def get(self, spec):
        return self.engines[spec.name] if isinstance(self.engines, dict) else self.engines

    def close(self):
        pass
