"""``mapd models``: the registry's entries and whether their weights are here. ``COMMANDS``
lists it; mapd/cli.py adds it to the ``mapd`` group."""
from __future__ import annotations

import click

from .registry import has_weights, known_models, load_spec, missing_hint


@click.command()
def models():
    """The registry's entries (local_teachers/models/), one line each: name, whether its weights
    are here (a folder with config.json and weight files), engine, GPUs (0 = CPU) and folder.
    --student and --teachers also take a YAML file, a model folder, or a Hugging Face repo id
    in the local cache ($HF_HUB_CACHE, else $HF_HOME/hub); nothing is ever downloaded."""
    lines = []
    for name in known_models():
        try:
            spec = load_spec(name)
        except (OSError, ValueError) as e:
            lines.append((name, "invalid", str(e)))
            continue
        state = "present" if has_weights(spec.path) else "missing"
        hint = missing_hint(spec) if state == "missing" else ""
        lines.append((name, state, f"{spec.engine}, gpus {spec.gpus}, {spec.path}{hint}"))
    width = max(len(name) for name, _, _ in lines)
    for name, state, details in lines:
        click.echo(f"{name:<{width}}  {state:<7}  {details}")


COMMANDS = [models]
