"""Settled paths to index runs: for each watched folder, the deepest folder holding all of
its settled paths, and the files to read there (``IndexOptions.only``). The run scans that
folder whole, so files gone from it are forgotten (or kept, if it lost most of them) by the
indexer's usual rules, and moves reuse their vectors; files still settling are left out."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dreamsearch.watcher.roots import Root
from dreamsearch.watcher.settle import ignored


@dataclass(frozen=True)
class Batch:
    """One index run: ``folder`` scanned, ``only`` (relative to it) read; ``paths`` are
    the settled paths it covers."""

    folder: Path
    only: frozenset[str]
    paths: frozenset[str]


def plan_batches(paths: Iterable[str], roots: Sequence[Root], settling: Container[str]) -> list[Batch]:
    """The runs that index ``paths`` (settled), one per watched folder they are in (the
    innermost, as the indexer joins nested folders); paths in no present folder are left
    out. ``settling``: paths not settled yet, never read by these runs."""
    groups: dict[Root, list[str]] = defaultdict(list)
    for path in paths:
        holders = [root for root in roots if root.present and root.holding(path) is not None]
        if holders:
            groups[max(holders, key=lambda root: len(str(root.path)))].append(path)
    batches = []
    for root, group in groups.items():
        folder = _common_folder(root.path, group)
        only = {os.path.relpath(file, folder) for path in group for file in _files(path, root, settling)}
        batches.append(Batch(folder, frozenset(only), frozenset(group)))
    return batches


def _common_folder(root: Path, paths: list[str]) -> Path:
    """The deepest existing folder under ``root`` that holds every one of ``paths``."""
    folder = os.path.commonpath([path if os.path.isdir(path) else os.path.dirname(path) for path in paths])
    while not os.path.isdir(folder) and len(folder) > len(str(root)):
        folder = os.path.dirname(folder)
    return Path(folder) if Path(folder).is_relative_to(root) and os.path.isdir(folder) else root


def _files(path: str, root: Root, settling: Container[str]) -> Iterable[str]:
    """The files a settled path stands for: itself, or what a folder moved or copied in
    holds (a folder renamed into place sends one event, not one per file)."""
    if os.path.isfile(path) and not os.path.islink(path):
        yield path
    elif os.path.isdir(path) and not os.path.islink(path):
        for parent, folders, files in os.walk(path):
            folders[:] = [f for f in folders if not ignored(f)]
            for name in files:
                file = os.path.join(parent, name)
                if file not in settling and not ignored(root.holding(file) or name):
                    yield file
