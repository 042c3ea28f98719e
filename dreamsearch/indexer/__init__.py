"""Indexing: scan → read and hash once → decode (CPU threads, or GPU batches for JPEGs) →
embed → commit. ``run`` drives one run; the other modules are its stages.

``run`` (and with it the catalog and SQLAlchemy) is imported when first named: Ray's
decode tasks and embed actors import stages of this package and write no catalog."""

from typing import TYPE_CHECKING, Any

from dreamsearch.indexer.options import IndexOptions, IndexReport, ModelSource, Progress

if TYPE_CHECKING:
    from dreamsearch.indexer.run import check_engine, index_folders, outermost

__all__ = ["IndexOptions", "IndexReport", "ModelSource", "Progress", "check_engine", "index_folders", "outermost"]
_FROM_RUN = ("check_engine", "index_folders", "outermost")


def __getattr__(name: str) -> Any:
    if name in _FROM_RUN:
        from dreamsearch.indexer import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
