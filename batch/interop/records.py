"""The instruction records (``dataset/records.parquet``) in the dataset formats other trainers read:
a record is one user turn (``prompt``) and one assistant turn (``response``), as MAPD trains on it
with the student's chat template, learning the response only.

- ``messages``: TRL SFTTrainer's conversational language modeling, axolotl's ``chat_template``;
- ``prompt-completion``: TRL SFTTrainer's conversational prompt-completion (loss on the completion);
- ``alpaca``: LLaMA-Factory's and axolotl's ``alpaca`` (instruction, input, output).

Every line keeps ``record_id`` and ``kind`` (rationale or feedback): MAPD weights the two kinds'
losses by alpha and 1 - alpha, which a trainer reading one file can only do by that field."""
from __future__ import annotations

import polars as pl

from ..shards import StaleShardError


def _messages(r: dict) -> dict:
    return {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}


def _prompt_completion(r: dict) -> dict:
    return {"prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["response"]}]}


def _alpaca(r: dict) -> dict:
    return {"instruction": r["prompt"], "input": "", "output": r["response"]}


FORMATS = {"messages": _messages, "prompt-completion": _prompt_completion, "alpaca": _alpaca}


def lines(dataset, fmt: str) -> list[dict]:
    """The records of the run's finished dataset stage in format ``fmt``."""
    reason = dataset.pending().get(0)
    if reason:
        raise StaleShardError(f"{dataset.records_path}: {reason}; run `mapd dataset` first")
    return [{**FORMATS[fmt](r), "record_id": r["record_id"], "kind": r["kind"]}
            for r in pl.read_parquet(dataset.records_path).iter_rows(named=True)]
