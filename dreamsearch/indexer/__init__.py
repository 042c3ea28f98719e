"""Indexing: scan → read and hash once → decode (CPU threads, or GPU batches for JPEGs) →
embed → commit. ``run`` drives one run; the other modules are its stages."""

from dreamsearch.indexer.options import IndexOptions, IndexReport, ModelSource, Progress
from dreamsearch.indexer.run import check_engine, index_folders, outermost

__all__ = ["IndexOptions", "IndexReport", "ModelSource", "Progress", "check_engine", "index_folders", "outermost"]
