"""``dreamsearch status`` and ``forget``: the library itself."""

from __future__ import annotations

from pathlib import Path

import click

from dreamsearch.cli.common import library_option
from dreamsearch.display import display_path, printable


@click.command()
@library_option
@click.option("--failed", "show_failed", is_flag=True, help="List files that could not be read, with reasons.")
def status(library_path, show_failed) -> None:
    """Show the library: folders, files, vectors per model, index type, size on disk."""
    from dreamsearch.api import Library
    from dreamsearch.status import status_lines

    with Library.open(library_path) as library:
        lines = status_lines(library.status(show_failed))
    click.echo(printable("\n".join(lines)))


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@library_option
def forget(folder, library_path) -> None:
    """Remove FOLDER (an indexed root) and its files from the library."""
    from dreamsearch.api import Library

    with Library.open(library_path) as library:
        removed = library.forget(folder)
    click.echo(f"forgot {display_path(Path(folder).expanduser().resolve())} ({removed} files)")
