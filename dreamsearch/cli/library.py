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
        lines = status_lines(library.status(show_failed=show_failed))
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


@click.command()
@click.argument("dest", type=click.Path(path_type=Path))
@library_option
def backup(dest, library_path) -> None:
    """Copy the library's catalog to DEST (a file, or a folder: DEST/catalog.sqlite), one
    consistent snapshot even while an index runs. Never cp a live catalog.sqlite: commits
    may still sit in its -wal. The index files are rebuilt from the catalog."""
    from dreamsearch.api import Library
    from dreamsearch.display import human_bytes

    with Library.open(library_path) as library:
        copy = library.backup(dest)
    click.echo(
        f"wrote {display_path(copy.path)}: the catalog, {_count(copy.folders, 'folder')}, "
        f"{_count(copy.files, 'file')} ({human_bytes(copy.size)}); the index files are rebuilt from it "
        "and need no backup"
    )


@click.command()
@click.argument("backup_file", metavar="BACKUP", type=click.Path(path_type=Path))
@library_option
def restore(backup_file, library_path) -> None:
    """Replace the library's catalog with BACKUP (a file written by `dreamsearch backup`, or
    the folder it wrote catalog.sqlite to). Removes the catalog's -wal and -shm (a killed
    writer's WAL would be replayed over it) and rebuilds the indexes that no longer match.
    Stop `serve` first."""
    from dreamsearch.api import Library

    with Library.open(library_path) as library:
        copy = library.restore(backup_file)
    click.echo(
        f"restored {display_path(copy.path)} from {display_path(Path(backup_file))}: "
        f"{_count(copy.folders, 'folder')}, {_count(copy.files, 'file')}; indexes brought in line with it"
    )


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
