"""transformers backend: batched ``generate`` with left padding, requests sorted by length so a
batch wastes little on padding.

Seeds: a sampled batch is seeded with the seed of its first request, so a rerun with the same
requests repeats, but a request's sample depends on its batch (unlike vLLM's per-request seeds).
Greedy decoding does not depend on seeds at all.

Sampling: an entry's fields as vLLM takes them (top_k, min_p, repetition_penalty, stop strings
ending a completion and left out of its text); presence and frequency penalties have no
counterpart in ``generate``, and the registry refuses them for this engine.
"""
from __future__ import annotations

import contextlib
import os

from tqdm import tqdm

from .engine import Engine


class TransformersEngine(Engine):
    batch_size = int(os.environ.get("MAPD_HF_BATCH", "8"))

    def _load(self):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec = self.spec
        self.device = "cuda" if spec.gpus and torch.cuda.is_available() else "cpu"
        tokenizer = AutoTokenizer.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            spec.path,
            dtype=getattr(torch, spec.dtype),
            trust_remote_code=spec.trust_remote_code,
            device_map="auto" if self.device == "cuda" else None,
        ).eval()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(self.model, tokenizer)
        self.adapter_names: dict[str, str] = {}
        return tokenizer

    def _release(self):
        del self.model

    def _use_adapter(self, adapter):
        """Activate the peft adapter in ``adapter`` (loaded once), or the bare base model."""
        from peft import PeftModel

        if adapter is None:
            return self.model.disable_adapter() if isinstance(self.model, PeftModel) else contextlib.nullcontext()
        name = self.adapter_names.get(adapter)
        if name is None:
            name = self.adapter_names[adapter] = f"adapter-{len(self.adapter_names) + 1}"
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(adapter, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, adapter, adapter_name=name).eval()
        self.model.set_adapter(name)
        return contextlib.nullcontext()

    def _generate(self, prompt_ids, requests, adapter):
        # A batch shares one set of sampling settings; longest first, so memory trouble shows early.
        groups: dict = {}
        for i in sorted(range(len(requests)), key=lambda i: -len(prompt_ids[i])):
            groups.setdefault(requests[i].sampling, []).append(i)
        batches = [g[k:k + self.batch_size] for g in groups.values() for k in range(0, len(g), self.batch_size)]
        result: list = [None] * len(requests)
        with self._use_adapter(adapter):
            for batch in tqdm(batches, desc=f"{self.spec.name} (transformers)", unit="batch"):
                for i, out in zip(batch, self._generate_batch([prompt_ids[i] for i in batch], requests[batch[0]])):
                    result[i] = out
        return result

    def _generate_batch(self, ids_list, first):
        import torch

        width = max(len(x) for x in ids_list)
        input_ids = torch.tensor([[self.pad_id] * (width - len(x)) + x for x in ids_list], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids_list], device=self.device)
        s = first.sampling
        sample = s.temperature > 0
        if sample:
            torch.manual_seed(first.seed)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=s.max_tokens,
                do_sample=sample,
                # Every setting that applies given, as vLLM takes them: none left to the model's
                # generation_config (top_k 0 turns off transformers' default of 50).
                temperature=s.temperature if sample else None,
                top_p=s.top_p if sample else None,
                top_k=s.top_k if sample else None,
                min_p=s.min_p if sample else None,
                repetition_penalty=s.repetition_penalty,
                stop_strings=list(s.stop) or None,
                tokenizer=self.tokenizer,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids,
            )
        results = []
        for row in out[:, width:].tolist():
            stop = next((k for k, t in enumerate(row) if t in self.eos_ids), None)
            # Count the stop token as generated, as vLLM does.
            tokens = row if stop is None else row[: stop + 1]
            text = self._decode(tokens)
            reason = "length" if stop is None else "stop"
            if s.stop and (cut := self._cut_at_stop(tokens, text, s.stop)):
                tokens, text, reason = cut
            results.append((text, len(tokens), reason))
        return results

    def _decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _cut_at_stop(self, tokens, text, stops):
        """As vLLM ends at a stop string: the text before the first one, the tokens up to the one
        that completed it (generation stopped there; what follows is padding); None if none came."""
        found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
        if not found:
            return None
        # The shortest prefix whose text holds a stop string (texts of longer prefixes extend it).
        lo, hi = 1, len(tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if any(stop in self._decode(tokens[:mid]) for stop in stops):
                hi = mid
            else:
                lo = mid + 1
        return tokens[:lo], text[:min(found)], "stop"


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]
