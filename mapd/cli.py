"""``mapd``: the command line. Each executor's module lists its commands in ``COMMANDS``;
they are all added here, one way, so no module below this one imports the CLI."""
from __future__ import annotations

import click

from mapd.batch.commands import COMMANDS as RUN_COMMANDS
from mapd.batch.interop.commands import COMMANDS as INTEROP_COMMANDS
from mapd.local_teachers.commands import COMMANDS as MODEL_COMMANDS
from mapd.slurm.commands import COMMANDS as SLURM_COMMANDS


@click.group()
def main():
    """Mistake-Aware Peer-Review Distillation, offline, on local models."""


for command in (*RUN_COMMANDS, *INTEROP_COMMANDS, *MODEL_COMMANDS, *SLURM_COMMANDS):
    main.add_command(command)
