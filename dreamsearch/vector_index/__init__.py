"""FAISS indexes derived from the catalog: one per model, rebuildable at any time."""

from dreamsearch.vector_index.index import IndexFileError, IndexMeta, VectorIndex
from dreamsearch.vector_index.policy import IndexPlan, plan_for, with_kind
from dreamsearch.vector_index.sync import open_index, rebuild, save_indexes

__all__ = [
    "IndexFileError",
    "IndexMeta",
    "IndexPlan",
    "VectorIndex",
    "open_index",
    "plan_for",
    "rebuild",
    "save_indexes",
    "with_kind",
]
