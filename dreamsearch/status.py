"""What ``dreamsearch status`` reports about a library, as lines of text."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from dreamsearch.catalog import Catalog
from dreamsearch.library import LibraryFolder
from dreamsearch.paths import display_path, human_bytes, problem_line
from dreamsearch.vector_index.index import IndexFileError, meta_path, read_meta
from dreamsearch.vector_index.sync import load_checked


def library_status(root: Path, show_failed: bool = False) -> list[str]:
    library = LibraryFolder.existing(root)
    lines = [f"library {library.root} ({_size(library.root)} on disk)"]
    with Catalog(library.catalog_path, read_only=True) as catalog:
        counts = catalog.root_counts()
        if not counts:
            lines.append("no folders indexed yet: run `dreamsearch index FOLDER`")
        for path, ok, failed in counts:
            missing = "" if Path(path).is_dir() else "  [folder missing]"
            lines.append(f"  {display_path(path)}: {ok} images, {failed} unreadable{missing}")
        for name in catalog.model_names():
            model = catalog.model(name)
            lines.append(f"model {name}: {catalog.count_vectors(model)} vectors, dim {model.dim}, "
                         f"{_index_line(library, catalog, model)}")
        if show_failed:
            for path, reason in catalog.failed_files():
                lines.append(f"failed {problem_line(path, reason)}")
    return lines


def _index_line(library: LibraryFolder, catalog: Catalog, model) -> str:
    """The saved index of ``model``, checked byte for byte against its commit point and
    against this catalog (what the next writer would check)."""
    try:
        if read_meta(library.index_dir, model.name) is None:
            return "no index saved yet (the next `dreamsearch index` builds it)"
        index = load_checked(catalog, model, library.index_dir, verify="full")
    except IndexFileError as exc:
        return (f"index NOT USABLE: {exc}; queries rebuild it in memory meanwhile and the next "
                f"`dreamsearch index` rebuilds and saves it")
    saved = meta_path(library.index_dir, model.name).stat().st_mtime
    when = datetime.fromtimestamp(saved).isoformat(sep=" ", timespec="seconds")
    behind = len(catalog.changes_since(model, index.meta.seq))
    lag = f", {behind} changes behind the catalog (caught up on use)" if behind else ""
    return f"index {index.plan.factory} of {len(index)} vectors, checksum ok (saved {when}){lag}"


def _size(folder: Path) -> str:
    return human_bytes(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()))
