"""What ``dreamsearch status`` and ``/api/status`` report about a library: the data, and
its rendering as lines of text for the terminal."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from dreamsearch.catalog import Catalog, FailedFile, ModelInfo
from dreamsearch.display import display_path, human_bytes, problem_line
from dreamsearch.failures import PERMANENT, TRANSIENT_TRIES
from dreamsearch.layout import LibraryLayout
from dreamsearch.vector_index.index import IndexFileError, meta_path, read_meta
from dreamsearch.vector_index.sync import load_checked
from dreamsearch.watcher import notices

#: How each ``verify`` level reports a saved index that passed.
CHECKED = {"full": "checksum ok", "quick": "size and edge digests ok (status checks every byte)"}


@dataclass(frozen=True)
class FolderStatus:
    path: str
    images: int
    unreadable: int
    missing: bool


@dataclass(frozen=True)
class ModelStatus:
    name: str
    vectors: int
    dim: int
    index: str  # the saved index's state, one line


@dataclass(frozen=True)
class LibraryStatus:
    library: str
    size_bytes: int
    folders: list[FolderStatus] = field(default_factory=list)
    models: list[ModelStatus] = field(default_factory=list)
    failed: list[FailedFile] = field(default_factory=list)  # if asked for
    #: What the watchers running now (``dreamsearch watch``, ``serve --watch``) warn about.
    watch_warnings: list[str] = field(default_factory=list)


def catalog_status(
    layout: LibraryLayout,
    catalog: Catalog,
    show_failed: bool = False,
    verify: str = "full",
    thumbnail_bytes: int | None = None,
) -> LibraryStatus:
    """The library at ``layout`` as ``catalog`` (open) sees it. ``verify="full"`` hashes
    every saved index byte; the server asks ``"quick"`` (size and edge digests) and gives
    its thumbnail cache's size: ``/api/status`` must answer in milliseconds while heavy work
    runs, and hashing a 300 MB index took 0.35 s."""
    folders = [FolderStatus(path, ok, failed, not Path(path).is_dir()) for path, ok, failed in catalog.root_counts()]
    models = []
    for info in catalog.models():
        models.append(
            ModelStatus(info.name, catalog.count_vectors(info), info.dim, _index_line(layout, catalog, info, verify))
        )
    failed = catalog.failed_files() if show_failed else []
    return LibraryStatus(
        str(layout.root),
        layout.bytes_on_disk(thumbnail_bytes),
        folders,
        models,
        failed,
        notices.current(layout.root),
    )


def status_lines(status: LibraryStatus) -> list[str]:
    lines = [f"library {status.library} ({human_bytes(status.size_bytes)} on disk)"]
    if not status.folders:
        lines.append("no folders indexed yet: run `dreamsearch index FOLDER`")
    for folder in status.folders:
        missing = "  [folder missing]" if folder.missing else ""
        lines.append(f"  {display_path(folder.path)}: {folder.images} images, {folder.unreadable} unreadable{missing}")
    for model in status.models:
        lines.append(f"model {model.name}: {model.vectors} vectors, dim {model.dim}, {model.index}")
    lines += [f"failed {problem_line(failed.path, failed.reason)} [{retry_note(failed)}]" for failed in status.failed]
    return lines + [f"watching: {line}" for line in status.watch_warnings]


def retry_note(failed: FailedFile) -> str:
    """Whether and when ``index`` tries the file again (``dreamsearch.failures``)."""
    if failed.kind == PERMANENT:
        return "permanent: retried when the file changes, or with index --retry-failed"
    if failed.runs >= TRANSIENT_TRIES:
        return f"transient, {failed.runs} runs in a row: retried when the file changes, or with index --retry-failed"
    return "transient: retried by the next index run"


def _index_line(layout: LibraryLayout, catalog: Catalog, info: ModelInfo, verify: str) -> str:
    """The saved index of the model ``info``, checked against its commit point (byte for
    byte with ``verify="full"``, what the next writer would check) and against this catalog."""
    try:
        if read_meta(layout.index_dir, info.name) is None:
            return "no index saved yet (the next `dreamsearch index` builds it)"
        index = load_checked(catalog, info, layout.index_dir, verify=verify)
    except IndexFileError as exc:
        return (
            f"index NOT USABLE: {exc}; queries rebuild it in memory meanwhile and the next "
            f"`dreamsearch index` rebuilds and saves it"
        )
    saved = meta_path(layout.index_dir, info.name).stat().st_mtime
    when = datetime.fromtimestamp(saved).isoformat(sep=" ", timespec="seconds")
    behind = len(catalog.changes_since(info, index.meta.seq))
    lag = f", {behind} changes behind the catalog (caught up on use)" if behind else ""
    return f"index {index.plan.factory} of {len(index)} vectors, {CHECKED[verify]} (saved {when}){lag}"
