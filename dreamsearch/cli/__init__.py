"""The ``dreamsearch`` command. Thin: each command parses its options, calls the
``Library`` service layer (``dreamsearch.api``), and renders the result.

Heavy modules (torch, open_clip) are imported only when a model is built, and each
command checks its arguments before importing the library layer, so ``--help``,
``status``, ``query --like`` and every mistake answer at once (tests/test_cold_start.py). Each command lives
in its own module, importing only ``common``: no module here imports another's commands.
"""

from __future__ import annotations

import atexit
import gc

import click

from dreamsearch import __version__
from dreamsearch.cli.common import CommandGroup
from dreamsearch.cli.embed import embed
from dreamsearch.cli.eval import eval_group
from dreamsearch.cli.index import index_command
from dreamsearch.cli.library import backup, forget, restore, status
from dreamsearch.cli.models import models
from dreamsearch.cli.search import compare, duplicates, query
from dreamsearch.cli.serve import serve
from dreamsearch.cli.watch import watch


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dreamsearch")
def main() -> None:
    """Find the images in your folders that look most like a given one (DreamSim)."""


# Registered first, so it runs last: the interpreter's final collection then skips every
# object the command made. It went through them one by one (OpenVINO's compiled model,
# SQLAlchemy's caches, ...), ~0.3 s of each command's exit on 2 cores; the system frees the
# memory anyway, and the commands close their files and databases themselves
# (docs/performance.md#cold-commands).
atexit.register(gc.freeze)

for command in (
    index_command,
    query,
    compare,
    duplicates,
    status,
    forget,
    backup,
    restore,
    embed,
    models,
    eval_group,
    serve,
    watch,
):
    main.add_command(command)
